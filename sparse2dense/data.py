"""Problems, splits and prompts, one schema {id, problem, answer} for toy and hub data.

The labeled budget L, the held-out labeled set H and the distillation prompts are explicit
splits with a fingerprint (a hash of their ids), so every manifest says which labels it spent.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

from . import toy_task
from .config import BenchmarkSpec, DataSpec

# Benchmarks and training pools are drawn from disjoint seeds of the toy generator.
_TOY_POOL_SEED, _TOY_BENCH_SEED = 1_000, 2_000


@dataclass(frozen=True)
class Split:
    name: str
    rows: list[dict]

    @property
    def fingerprint(self) -> str:
        ids = json.dumps([r["id"] for r in self.rows]).encode()
        return hashlib.sha256(ids).hexdigest()[:16]

    def describe(self) -> dict:
        return {"name": self.name, "size": len(self.rows), "fingerprint": self.fingerprint}


def _toy_pool(data: DataSpec) -> list[dict]:
    return toy_task.generate(data.toy, data.pool_size, seed=_TOY_POOL_SEED + data.split_seed)


def _hub_pool(data: DataSpec) -> tuple[list[dict], list[dict]]:
    from . import hub_data

    rows = hub_data.load_hub_rows("dapo-math-17k", path=data.train_path)
    return hub_data.split_dapo(rows, seed=data.split_seed, heldout_fraction=data.heldout_fraction)


def train_heldout(data: DataSpec) -> tuple[list[dict], list[dict]]:
    """The training pool and the held-out pool, split by hash so budgets grow by extension."""
    if data.source == "hub":
        return _hub_pool(data)
    pool = _toy_pool(data)
    rng = random.Random(data.split_seed)
    rng.shuffle(pool)
    n_heldout = int(len(pool) * data.heldout_fraction)
    return pool[n_heldout:], pool[:n_heldout]


def splits(data: DataSpec) -> dict[str, Split]:
    """labeled (L), heldout (H) and distill (prompts only: their labels are never read)."""
    train, heldout = train_heldout(data)
    for name, need, pool in (("labeled_budget", data.labeled_budget, train),
                             ("distill_prompts", data.distill_prompts, train),
                             ("heldout_budget", data.heldout_budget, heldout)):
        if need > len(pool):
            raise ValueError(f"data.{name} = {need} is larger than its pool ({len(pool)} problems)")
    return {
        "labeled": Split("labeled", train[: data.labeled_budget]),
        "heldout": Split("heldout", heldout[: data.heldout_budget]),
        # Taken from the end of the training pool, so growing L does not change them.
        "distill": Split("distill", [_unlabeled(r) for r in train[::-1][: data.distill_prompts]]),
    }


def _unlabeled(row: dict) -> dict:
    return {"id": row["id"], "problem": row["problem"]}


def benchmark(spec: BenchmarkSpec, data: DataSpec) -> Split:
    if spec.source == "toy":
        train, heldout = train_heldout(data)
        seen = {r["problem"] for r in train + heldout}
        rows = toy_task.generate(data.toy, spec.size or 600, seed=_TOY_BENCH_SEED + data.split_seed,
                                 exclude=seen, prefix=spec.name)
        return Split(spec.name, rows)
    from . import hub_data

    return Split(spec.name, hub_data.load_hub_rows(spec.source, path=spec.path, limit=spec.size))


def messages(problem: str, data: DataSpec) -> list[dict]:
    """The chat prompt for a problem: optional system prompt, then the problem and the suffix."""
    content = f"{problem} {data.prompt_suffix}".strip() if data.prompt_suffix else problem
    system = [{"role": "system", "content": data.system_prompt}] if data.system_prompt else []
    return system + [{"role": "user", "content": content}]
