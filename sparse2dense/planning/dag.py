"""The experiment DAG: content-addressed nodes and the plan of a grid (pure Python, no Prefect).

A node's key hashes its kind, the kind's semantic version, its canonical params (seed
included) and its inputs' keys. Arms that share a stage share its node, so the RL'd teacher
or the forward-KL student is computed once for the whole grid, and a rerun finds every key
already on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..config import BASE_MODELS, COLOCATED_KINDS, Grid, GridNode, Profile, SampledLength, generation_backend

log = logging.getLogger("sparse2dense")

# Bump a kind's version when its behaviour changes: its nodes (and all downstream) get new keys.
VERSIONS = {"base": 2, "grpo": 2, "replay": 2, "rollouts": 2, "forward_kl": 2, "opd": 2, "evaluate": 2}
MANIFEST = "manifest.json"
SPEC = "spec.json"  # what a launched node reads: written before it runs, not one of its results
NODE_FILE = "node.json"  # the node a folder holds, written as it starts
SPLITS_FILE = "splits.json"  # the ids of the splits a node read, for its run's dataset inputs


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

    def spec(self) -> NodeSpec:
        return NodeSpec(self.kind, self.name, self.key, self.params, {role: n.key for role, n in self.inputs})


@dataclass(frozen=True)
class NodeSpec:
    """A node as one run of it needs it: what to compute and its inputs' keys (not their whole lineage)."""

    kind: str
    name: str
    key: str
    params: dict
    inputs: dict[str, str]

    def to_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "key": self.key, "params": self.params, "inputs": self.inputs}


def make_node(kind: str, name: str, params: dict, inputs: dict[str, Node]) -> Node:
    payload = {"kind": kind, "version": VERSIONS[kind], "params": params,
               "inputs": {role: node.key for role, node in sorted(inputs.items())}}
    key = hashlib.sha256(canonical(payload).encode()).hexdigest()[:16]
    return Node(kind, name, json.loads(canonical(params)), tuple(sorted(inputs.items())), key)


# --- params: what each kind's result depends on ---------------------------------------


def _context(profile: Profile) -> dict:
    """What every node's result depends on besides its own settings: prompt format, precision, CPU threads."""
    d = profile.data
    return {"suffix": d.prompt_suffix, "system": d.system_prompt, "template": d.chat_template_kwargs,
            "checker": d.checker, "precision": profile.hardware.precision, "threads": profile.hardware.threads}


def _sampler(profile: Profile, kind: str) -> dict:
    """A node that samples depends on the backend it samples with (vLLM and transformers draw differently).
    transformers, the backend of every key before vLLM ran, stays out of the key: those nodes keep theirs."""
    backend = generation_backend(profile, colocated=kind in COLOCATED_KINDS)
    return {} if kind == "forward_kl" or backend == "transformers" else {"sampler": backend}


def _split(profile: Profile, name: str) -> dict:
    """A split by its definition, so planning never loads the data (the run records its fingerprint)."""
    d = profile.data
    budget = {"labeled": d.labeled_budget, "heldout": d.heldout_budget, "distill": d.distill_prompts}[name]
    if d.source == "toy":
        source = d.toy.model_dump() | {"pool_size": d.pool_size}
    else:  # the data file's content, not its path, decides the rows
        source = {"dataset": d.train_dataset, "file": _file_identity(d.train_path)}
    return {"name": name, "size": budget, "source": source, "seed": d.split_seed, "heldout": d.heldout_fraction}


def _file_identity(path: str | None) -> str | None:
    """A local data file or folder by content (memoised), the hub copy by name (None)."""
    if path is None:
        return None
    from ..identity import fingerprint

    return fingerprint(Path(path)) if Path(path).exists() else f"missing:{path}"


def base_params(profile: Profile, role: str, seed: int) -> dict:
    """A base model's params; a toy one is drawn with the profile's seed, plus the grid seed under
    `seed_scope: all`."""
    spec = getattr(profile.models, role)
    if spec.source == "hub":
        from ..identity import identity

        return {"role": role, "model": identity(spec)}
    data = profile.data.model_dump(include={"toy", "split_seed", "heldout_fraction", "pool_size", "benchmarks"})
    drawn = profile.seed + (seed if profile.seed_scope == "all" else 0)
    return {"role": role, "model": spec.model_dump(), "seed": drawn, "data": data} | _context(profile)


def stage_params(profile: Profile, node: GridNode, seed: int) -> dict:
    common = {"seed": seed} | _context(profile) | _sampler(profile, node.kind)
    if node.kind == "grpo":
        section = node.settings or "grpo"
        spec = getattr(profile, section)
        return common | {"settings": section, "split": _split(profile, node.split),
                         **_length(spec, _split(profile, node.split)["size"])}
    if node.kind == "replay":  # Stage 3's settings and as many updates, on labels the teacher already spent
        return common | {"settings": "student_grpo", "split": _split(profile, "labeled"),
                         **_length(profile.student_grpo, profile.data.heldout_budget)}
    if node.kind == "rollouts":
        return common | {"spec": profile.rollouts.model_dump(), "split": _split(profile, "distill")}
    if node.kind == "forward_kl":
        return common | {"spec": profile.forward_kl.model_dump()}
    return common | {"split": _split(profile, "distill"), **_length(profile.opd, profile.data.distill_prompts)}


def _length(spec: SampledLength, problems: int) -> dict:
    """A sampling stage's settings with its length in optimizer steps; a length in epochs over `problems`
    stays beside them, so the plan shows both and the key changes with the split's size."""
    steps = {"spec": spec.model_dump(exclude={"epochs"}) | {"steps": spec.steps_over(problems)}}
    if spec.epochs is None:
        return steps
    return steps | {"epochs": {"epochs": spec.epochs, "over": problems, "batches": spec.batches_in(problems)}}


def planned_steps(node: NodeSpec) -> int:
    """For progress lines: a stage's planned optimizer steps (0 when it does not train or cannot tell)."""
    p = node.params
    if node.kind == "base":
        return (p["model"].get("pretrain") or {}).get("max_steps", 0)
    return p.get("spec", {}).get("steps", 0)


def evaluate_params(profile: Profile, seed: int) -> dict:
    benchmarks = [b.model_dump(exclude={"path"}) | {"file": _file_identity(b.path)} for b in profile.data.benchmarks]
    return ({"seed": seed, "spec": profile.evaluate.model_dump(), "benchmarks": benchmarks} | _context(profile)
            | _sampler(profile, "evaluate"))


# --- the plan -------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the comparison: an arm at a seed (and labeled budget), the model it evaluates, its evaluation."""

    arm: str
    seed: int
    model: Node
    evaluation: Node
    budget: int


@dataclass
class Plan:
    profile: Profile
    grid: Grid
    seeds: list[int]
    nodes: dict[str, Node]  # key -> node, inputs before the nodes that use them
    rows: list[Row]
    arms_of: dict[str, list[str]]  # key -> arms whose result depends on it


def plan(profile: Profile, grid: Grid, arms: list[str] | None = None, seeds: list[int] = (0,)) -> Plan:
    """Every node of the chosen arms, for every seed and every labeled budget the grid sweeps."""
    chosen = arms or list(grid.arms)
    unknown = [a for a in chosen if a not in grid.arms]
    if unknown:
        raise ValueError(f"unknown arms {unknown}: the grid '{grid.name}' has {list(grid.arms)}")
    nodes: dict[str, Node] = {}
    arms_of: dict[str, list[str]] = {}
    rows: list[Row] = []
    for budget in grid.budgets or [profile.data.labeled_budget]:
        variant = with_budget(profile, budget)
        for seed in seeds:
            built = {role: make_node("base", role, base_params(variant, role, seed), {}) for role in BASE_MODELS}
            for arm in chosen:
                model = _build(grid.arms[arm], grid, variant, seed, built)
                evaluation = make_node("evaluate", f"evaluate:{arm}", evaluate_params(variant, seed),
                                       {"model": model})
                rows.append(Row(arm, seed, model, evaluation, budget))
                for node in lineage(evaluation):
                    nodes.setdefault(node.key, node)
                    if arm not in arms_of.setdefault(node.key, []):
                        arms_of[node.key].append(arm)
    return Plan(profile, grid, list(seeds), nodes, rows, arms_of)


def with_budget(profile: Profile, budget: int) -> Profile:
    """The profile with labeled budget L = `budget`, checked like any profile."""
    if budget == profile.data.labeled_budget:
        return profile
    dumped = profile.model_dump()
    dumped["data"]["labeled_budget"] = budget
    return Profile.model_validate(dumped)


def _build(name: str, grid: Grid, profile: Profile, seed: int, built: dict[str, Node]) -> Node:
    """The node a grid name stands for at `seed`, building its inputs first (memoised in `built`)."""
    if name not in built:
        spec = grid.nodes[name]
        inputs = {role: _build(ref, grid, profile, seed, built) for role, ref in spec.inputs().items()}
        built[name] = make_node(spec.kind, name, stage_params(profile, spec, seed), inputs)
    return built[name]


def node_tags(plan: Plan, key: str) -> dict[str, str]:
    """What MLflow groups a node's run by: every arm it serves, its seed (base models, trained once with the
    profile's seed, serve every seed of the grid)."""
    node = plan.nodes[key]
    if node.kind != "base":
        seed = str(node.params["seed"])
    else:  # shared by every seed, unless each seed draws its own
        seed = str(node.params["seed"] - plan.profile.seed) if plan.profile.seed_scope == "all" else "all"
    return {"s2d.arm": ",".join(plan.arms_of[key]), "s2d.seed": seed}


def family(node: Node) -> str:
    """Which base model a model node descends from: the model that received the labels."""
    if node.kind == "base":
        return node.params["role"]
    inputs = node.input_map
    return family(inputs.get("student") or inputs["model"])


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


def node_dir(root: Path, node: Node) -> Path:
    return Path(root) / node.kind / node.key


def read_manifest(root: Path, node: Node) -> dict | None:
    """The node's manifest when it completed (files not checked: see `verified_manifest`)."""
    path = node_dir(root, node) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if manifest.get("status") == "completed" else None


def verified_manifest(root: Path, node: Node, warn: bool = True) -> dict | None:
    """The manifest, if every file it lists is still what was written: same size and mtime, or else same sha256.

    A changed or missing file is named in a warning (unless `warn` is off) and the node counts as not computed.
    """
    manifest = read_manifest(root, node)
    if manifest is None:
        return None
    folder = node_dir(root, node)
    for rel, expected in manifest.get("files", {}).items():
        problem = _file_problem(folder / rel, expected)
        if problem:
            if warn:
                log.warning("%s %s [%s]: %s %s; the node and everything after it will be recomputed",
                            node.kind, node.name, node.key, folder / rel, problem)
            return None
    return manifest


def _file_problem(path: Path, expected: dict) -> str | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return "is missing"
    if stat.st_size != expected["size"]:
        return f"has changed size ({stat.st_size} bytes, {expected['size']} written)"
    if stat.st_mtime_ns == expected["mtime_ns"]:
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return None if digest.hexdigest() == expected["sha256"] else "has changed content"


@cache
def code_fingerprint() -> str:
    """A hash of the library's source: nodes cached under other code are flagged, not recomputed."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def all_done(plan: Plan, root: Path) -> bool:
    """Every node of `plan` computed, intact and logged to MLflow: a grid would have nothing to do."""
    for node in plan.nodes.values():
        manifest = verified_manifest(root, node, warn=False)
        if manifest is None or not manifest.get("tracked", True):
            return False
    return True


def status(root: Path, node: Node) -> str:
    """cached (done under this code), stale (done under other code) or pending."""
    manifest = read_manifest(root, node)
    if manifest is None:
        return "pending"
    return "cached" if manifest.get("code_fingerprint") == code_fingerprint() else "stale"
