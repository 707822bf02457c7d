"""The experiment DAG: content-addressed nodes and the plan of a grid (pure Python, no Prefect).

A node's key hashes its kind, the kind's semantic version, its canonical params (seed
included) and its inputs' keys. Arms that share a stage share its node, so the RL'd teacher
or the forward-KL student is computed once for the whole grid, and a rerun finds every key
already on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .config import BASE_MODELS, Grid, GridNode, Profile

# Bump a kind's version when its behaviour changes: its nodes (and all downstream) get new keys.
VERSIONS = {"base": 1, "grpo": 1, "replay": 1, "rollouts": 1, "forward_kl": 1, "opd": 1, "evaluate": 1}
MANIFEST = "manifest.json"


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class Node:
    kind: str
    name: str  # the grid's name for it (for people; not part of the key)
    params: dict = field(hash=False, compare=False)
    inputs: tuple[tuple[str, Node], ...] = field(hash=False, compare=False)
    key: str = ""

    @property
    def input_map(self) -> dict[str, Node]:
        return dict(self.inputs)


def make_node(kind: str, name: str, params: dict, inputs: dict[str, Node]) -> Node:
    payload = {"kind": kind, "version": VERSIONS[kind], "params": params,
               "inputs": {role: node.key for role, node in sorted(inputs.items())}}
    key = hashlib.sha256(canonical(payload).encode()).hexdigest()[:16]
    return Node(kind, name, json.loads(canonical(params)), tuple(sorted(inputs.items())), key)


# --- params: what each kind's result depends on ---------------------------------------


def _context(profile: Profile) -> dict:
    """What every node's result depends on besides its own settings: prompt format and precision."""
    d = profile.data
    return {"suffix": d.prompt_suffix, "system": d.system_prompt, "template": d.chat_template_kwargs,
            "precision": profile.hardware.precision}


def _split(profile: Profile, name: str) -> dict:
    """A split by its definition, so planning never loads the data (the run records its fingerprint)."""
    d = profile.data
    budget = {"labeled": d.labeled_budget, "heldout": d.heldout_budget, "distill": d.distill_prompts}[name]
    source = d.toy.model_dump() | {"pool_size": d.pool_size} if d.source == "toy" else {"path": d.train_path}
    return {"name": name, "size": budget, "source": source, "seed": d.split_seed, "heldout": d.heldout_fraction}


def base_params(profile: Profile, role: str) -> dict:
    spec = getattr(profile.models, role)
    if spec.source == "hub":
        return {"role": role, "model": spec.name}
    data = profile.data.model_dump(include={"toy", "split_seed", "heldout_fraction", "pool_size", "benchmarks"})
    return {"role": role, "model": spec.model_dump(), "seed": profile.seed, "data": data} | _context(profile)


def stage_params(profile: Profile, node: GridNode, seed: int) -> dict:
    common = {"seed": seed} | _context(profile)
    if node.kind == "grpo":
        section = node.settings or "grpo"
        return common | {"settings": section, "spec": getattr(profile, section).model_dump(),
                         "split": _split(profile, node.split)}
    if node.kind == "replay":  # Stage 3's settings on labels the teacher already spent
        return common | {"settings": "student_grpo", "spec": profile.student_grpo.model_dump(),
                         "split": _split(profile, "labeled")}
    if node.kind == "rollouts":
        return common | {"spec": profile.rollouts.model_dump(), "split": _split(profile, "distill")}
    if node.kind == "forward_kl":
        return common | {"spec": profile.forward_kl.model_dump()}
    return common | {"spec": profile.opd.model_dump(), "split": _split(profile, "distill")}


def evaluate_params(profile: Profile, seed: int) -> dict:
    return {"seed": seed, "spec": profile.evaluate.model_dump(),
            "benchmarks": [b.model_dump() for b in profile.data.benchmarks]} | _context(profile)


# --- the plan -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the comparison: an arm at a seed, the model it evaluates and that evaluation."""

    arm: str
    seed: int
    model: Node
    evaluation: Node


@dataclass
class Plan:
    profile: Profile
    grid: Grid
    seeds: list[int]
    nodes: dict[str, Node]  # key -> node, inputs before the nodes that use them
    rows: list[Row]
    arms_of: dict[str, list[str]]  # key -> arms whose result depends on it


def plan(profile: Profile, grid: Grid, arms: list[str] | None = None, seeds: list[int] = (0,)) -> Plan:
    chosen = arms or list(grid.arms)
    unknown = [a for a in chosen if a not in grid.arms]
    if unknown:
        raise ValueError(f"unknown arms {unknown}: the grid '{grid.name}' has {list(grid.arms)}")
    nodes: dict[str, Node] = {}
    arms_of: dict[str, list[str]] = {}
    rows: list[Row] = []
    bases = {role: make_node("base", role, base_params(profile, role), {}) for role in BASE_MODELS}

    for seed in seeds:
        built: dict[str, Node] = dict(bases)
        for arm in chosen:
            model = _build(grid.arms[arm], grid, profile, seed, built)
            evaluation = make_node("evaluate", f"evaluate:{arm}", evaluate_params(profile, seed), {"model": model})
            rows.append(Row(arm, seed, model, evaluation))
            for node in lineage(evaluation):
                nodes.setdefault(node.key, node)
                if arm not in arms_of.setdefault(node.key, []):
                    arms_of[node.key].append(arm)
    return Plan(profile, grid, list(seeds), nodes, rows, arms_of)


def _build(name: str, grid: Grid, profile: Profile, seed: int, built: dict[str, Node]) -> Node:
    """The node a grid name stands for at `seed`, building its inputs first (memoised in `built`)."""
    if name not in built:
        spec = grid.nodes[name]
        inputs = {role: _build(ref, grid, profile, seed, built) for role, ref in spec.inputs().items()}
        built[name] = make_node(spec.kind, name, stage_params(profile, spec, seed), inputs)
    return built[name]


def lineage(node: Node) -> list[Node]:
    """The node and everything upstream of it, inputs first."""
    order: list[Node] = []
    seen: set[str] = set()

    def visit(n: Node) -> None:
        if n.key in seen:
            return
        seen.add(n.key)
        for _, parent in n.inputs:
            visit(parent)
        order.append(n)

    visit(node)
    return order


# --- on disk --------------------------------------------------------------------------


def artifacts_root(artifacts: str | None = None) -> Path:
    """--artifacts, else $S2D_ARTIFACTS, else ./artifacts."""
    return Path(artifacts or os.environ.get("S2D_ARTIFACTS", "artifacts")).resolve()


def node_dir(root: Path, node: Node) -> Path:
    return Path(root) / node.kind / node.key


def read_manifest(root: Path, node: Node) -> dict | None:
    path = node_dir(root, node) / MANIFEST
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    return manifest if manifest.get("status") == "completed" else None


@cache
def code_fingerprint() -> str:
    """A hash of the library's source: nodes cached under other code are flagged, not recomputed."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def status(root: Path, node: Node) -> str:
    """cached (done under this code), stale (done under other code) or pending."""
    manifest = read_manifest(root, node)
    if manifest is None:
        return "pending"
    return "cached" if manifest.get("code_fingerprint") == code_fingerprint() else "stale"
