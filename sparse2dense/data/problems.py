"""Problems, splits and prompts, one schema {id, problem, answer} for toy and hub data.

The labeled budget L, the held-out labeled set H and the distillation prompts are explicit
splits with a fingerprint (a hash of their ids), so every manifest says which labels it spent.
Rows that cannot be used (no problem, no answer) are counted and skipped where they are read.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from functools import lru_cache

from ..config import BenchmarkSpec, DataSpec, ToyTaskSpec
from . import toy_task

# Benchmarks and training pools are drawn from disjoint seeds of the toy generator.
_TOY_POOL_SEED, _TOY_BENCH_SEED = 1_000, 2_000
SPLITS = ("labeled", "heldout", "distill")


@dataclass(frozen=True)
class Split:
    name: str
    rows: list[dict]
    skipped: dict[str, int] = field(default_factory=dict)  # unusable source rows, by reason

    @property
    def fingerprint(self) -> str:
        ids = json.dumps([r["id"] for r in self.rows]).encode()
        return hashlib.sha256(ids).hexdigest()[:16]

    def describe(self) -> dict:
        return {"name": self.name, "size": len(self.rows), "fingerprint": self.fingerprint,
                "skipped": dict(self.skipped)}


@lru_cache(maxsize=4)
def _pools(pool_json: str) -> tuple[list[dict], list[dict], dict[str, int]]:
    d = json.loads(pool_json)
    if d["source"] == "hub":
        from . import hub

        loaded = hub.load_hub_rows(d["train_dataset"], path=d["train_path"])
        train, heldout = hub.split_dapo(loaded.rows, seed=d["split_seed"], heldout_fraction=d["heldout_fraction"],
                                             places=loaded.places, records=loaded.records)
        return train, heldout, loaded.skipped
    pool = toy_task.generate(ToyTaskSpec(**d["toy"]), d["pool_size"], seed=_TOY_POOL_SEED + d["split_seed"])
    random.Random(d["split_seed"]).shuffle(pool)
    n_heldout = int(len(pool) * d["heldout_fraction"])
    return pool[n_heldout:], pool[:n_heldout], {}


def train_heldout(data: DataSpec) -> tuple[list[dict], list[dict]]:
    """The training pool and the held-out pool (loaded once per process and data definition)."""
    train, heldout, _ = _pools(_pool_key(data))
    return train, heldout


def _pool_key(data: DataSpec) -> str:
    # Only what decides the pools: budgets and prompts do not, so a budget sweep loads the data once.
    return data.model_dump_json(include={"source", "toy", "pool_size", "train_path", "train_dataset",
                                         "split_seed", "heldout_fraction"})


def split(data: DataSpec, name: str, size: int | None = None) -> Split:
    """One split: L (`labeled`) and H (`heldout`) grow by extension; `distill` has no labels.

    `size` defaults to the profile's budget for that split.
    """
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}: expected one of {SPLITS}")
    train, heldout, skipped = _pools(_pool_key(data))
    budget = {"labeled": data.labeled_budget, "heldout": data.heldout_budget, "distill": data.distill_prompts}[name]
    size = budget if size is None else size
    pool = heldout if name == "heldout" else train
    if size > len(pool):
        field_name = {"labeled": "labeled_budget", "heldout": "heldout_budget", "distill": "distill_prompts"}[name]
        raise ValueError(f"data.{field_name} = {size} is larger than its pool ({len(pool)} problems)")
    if name == "distill":
        # Taken from the end of the training pool, so growing L does not change them.
        return Split(name, [_unlabeled(r) for r in train[::-1][:size]], skipped)
    return Split(name, pool[:size], skipped)


def splits(data: DataSpec) -> dict[str, Split]:
    """labeled (L), heldout (H) and distill (prompts only: their labels are never read)."""
    return {name: split(data, name) for name in SPLITS}


def _unlabeled(row: dict) -> dict:
    return {"id": row["id"], "problem": row["problem"]}


def benchmark(spec: BenchmarkSpec, data: DataSpec) -> Split:
    if spec.source == "toy":
        train, heldout = train_heldout(data)
        seen = {r["problem"] for r in train + heldout}
        rows = toy_task.generate(data.toy, spec.size or 600, seed=_TOY_BENCH_SEED + data.split_seed,
                                 exclude=seen, prefix=spec.name)
        return Split(spec.name, rows)
    from . import hub

    loaded = hub.load_hub_rows(spec.source, path=spec.path, limit=spec.size)
    if not loaded.rows:
        raise ValueError(f"benchmark {spec.name}: no usable rows in {spec.path or spec.source} "
                         f"(skipped: {loaded.skipped})")
    return Split(spec.name, loaded.rows, loaded.skipped)


def messages(problem: str, data: DataSpec) -> list[dict]:
    """The chat prompt: optional system prompt, then the problem, a blank line and the suffix (the authors' join)."""
    content = f"{problem}\n\n{data.prompt_suffix}" if data.prompt_suffix else problem
    system = [{"role": "system", "content": data.system_prompt}] if data.system_prompt else []
    return system + [{"role": "user", "content": content}]
