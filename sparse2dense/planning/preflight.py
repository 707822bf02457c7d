"""Checks that run before any compute, so a grid that cannot finish is refused in seconds.

Each problem is one line naming what is wrong and how to fix it; `s2d grid` prints them and
exits with status 2. Nothing here loads a model: configs, folders, the hub cache, a health check,
the free disk; of the data, the benchmarks (for empty ones) and, for hub data, the training set,
whose pools every budget must fit (the grid loads it next anyway: the load is cached in-process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from ..config import BASE_MODELS, COLOCATED_KINDS, SAMPLING_KINDS, TRAINING_KINDS, Profile, is_local
from ..locations import STAND_INS, tracking_uri
from .dag import Plan, family, read_manifest

GIB = 2**30
CHECKPOINT_BYTES_PER_PARAM = 4 + 8  # fp32 master weights and AdamW's two moments
MODEL_BYTES_PER_PARAM = 4  # a trained model is saved with its fp32 weights


def problems(plan: Plan, root: Path) -> list[str]:
    """Everything that would stop `plan` from running, one line each (empty when it can start)."""
    profile = plan.profile
    found = _artifact_root(root)
    found += tracking_problems()
    found += _runtimes(plan)
    found += _stand_ins(profile) or _models(profile) + _data(profile)
    if not found:
        found += _pools(plan)
    if not found:
        found += _disk(plan, root)
    return found


def local_gangs(plan: Plan) -> list[str]:
    """Nodes that span machines cannot run under the local runner, which starts every rank on this host."""
    spans = {}
    for node in plan.nodes.values():
        r = plan.profile.resources.of_node(node)
        if r.machines > 1:
            spans[f"{node.kind} {node.name}"] = f"{r.machines} machines x {r.gpus or r.processes} GPUs"
    if not spans:
        return []
    named = ", ".join(f"{name} needs {need}" for name, need in sorted(spans.items()))
    return [f"{named}; the local runner would start every rank on this one machine: start a Ray cluster "
            "(`ray start --head` on one machine, `ray start --address HEAD:6379` on the others) and run "
            "s2d grid --runner ray --address HEAD:6379"]


def _runtimes(plan: Plan) -> list[str]:
    """Each node runtime (`resources.*.python`, else the grid's own) exists and can import what its nodes need:
    the stages' packages in another environment, vLLM (its GPU or CPU build) wherever a node samples with it."""
    needs: dict[str, set[str]] = {}
    for node in plan.nodes.values():
        r = plan.profile.resources.of_node(node)
        modules = _stage_modules(r) if r.python else set()
        asks_vllm = plan.profile.generation.configured(node.kind in COLOCATED_KINDS) == "vllm"
        modules |= {"vllm"} if node.kind in SAMPLING_KINDS and asks_vllm else set()
        if modules:
            needs.setdefault(r.python or sys.executable, set()).update(modules)
    return [line for python, modules in sorted(needs.items()) for line in _runtime(python, sorted(modules))]


def _stage_modules(r) -> set[str]:
    """What a node needs in an environment of its own, besides vLLM."""
    return ({"sparse2dense", "torch", "transformers", "trl"} | ({"accelerate"} if r.launch == "accelerate" else set())
            | ({"deepspeed"} if r.strategy == "zero3" else set()))


def _runtime(python: str, modules: list[str]) -> list[str]:
    if not shutil.which(python):
        return [f"resources: the node runtime {python} does not exist or is not executable: build it (`make "
                "node-runtime` builds ./.venv-node; elsewhere, the stage packages, then `pip install --no-deps -e .`) "
                "or drop `python` to run nodes in the grid's environment"]
    probe = ("import importlib.util, json, sys; "
             "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m) is None]))")
    try:
        done = subprocess.run([python, "-c", probe, *modules], capture_output=True, text=True, timeout=60)
        missing = json.loads(done.stdout)
    except (subprocess.TimeoutExpired, ValueError, OSError) as err:
        return [f"resources: the node runtime {python} does not start a Python ({err})"]
    return [f"resources: the node runtime {python} cannot import {m}, which its nodes need: install it there"
            for m in missing]


def _artifact_root(root: Path) -> list[str]:
    probe = root / f".write-probe-{uuid.uuid4().hex}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_text("s2d")
        probe.unlink()
    except OSError as err:
        return [f"the artifact root {root} is not writable ({err.strerror or err}): "
                "choose another with --artifacts or S2D_ARTIFACTS"]
    return []


def tracking_problems() -> list[str]:
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                if response.status == 200:
                    return []
                reason = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as err:
            reason = str(getattr(err, "reason", err))
        return [f"the MLflow tracking server {uri} does not answer ({reason}): start it (`make ui`) or unset "
                "MLFLOW_TRACKING_URI to use a local SQLite store"]
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            return [f"MLFLOW_TRACKING_URI {uri}: the folder {folder} does not exist or is not writable"]
    return []


def _stand_ins(profile: Profile) -> list[str]:
    """The hub-smoke profiles before their stand-ins are built: one line that says how, not one per path."""
    d = profile.data
    paths = [m.name for m in (profile.models.teacher, profile.models.student) if m.source == "hub" and is_local(m.name)]
    paths += [d.train_path, *(b.path for b in d.benchmarks)] if d.source == "hub" else []
    for folder in {parent for path in paths if path for parent in Path(path).expanduser().parents}:
        if folder.name in STAND_INS and not folder.exists():
            return [f"{folder} does not exist: this profile's models and data are local stand-ins for the hub's, "
                    f"which `{STAND_INS[folder.name]}` builds there"]
    return []


def _models(profile: Profile) -> list[str]:
    from ..identity import resolve_commit

    found, vocab = [], {}
    for role in BASE_MODELS:
        spec = getattr(profile.models, role)
        if spec.source != "hub":
            continue
        where = f"models.{role}.name"
        if is_local(spec.name):
            config = Path(spec.name).expanduser() / "config.json"
            if not config.is_file():
                found.append(f"{where}: {spec.name} is not a model folder (no config.json there)")
                continue
        elif resolve_commit(spec.name, spec.revision) is None:
            found.append(f"{where}: {spec.name} cannot be resolved: the Hugging Face hub is unreachable and the "
                         "local hub cache has no copy; download it first (`huggingface-cli download "
                         f"{spec.name}`) or point {where} at a local folder")
            continue
        vocab[role] = _vocab_size(spec)
        if vocab[role] and spec.vocab_size and vocab[role] != spec.vocab_size:
            found.append(f"models.{role}.vocab_size is {spec.vocab_size}, but {spec.name} has {vocab[role]}")
    if vocab.get("teacher") and vocab.get("student") and vocab["teacher"] != vocab["student"]:
        found.append(f"the teacher's vocabulary ({vocab['teacher']}) differs from the student's "
                     f"({vocab['student']}): token-level distillation needs one vocabulary")
    return found


def _vocab_size(spec) -> int | None:
    from .cost import local_config

    path = local_config(spec)
    if path is None:
        return None
    config = json.loads(path.read_text())
    return config.get("text_config", config).get("vocab_size")


def _data(profile: Profile) -> list[str]:
    d = profile.data
    if d.source != "hub":
        return []
    found = []
    paths = [("data.train_path", d.train_path, d.train_dataset)]
    paths += [(f"data.benchmarks.{b.name}.path", b.path, b.source) for b in d.benchmarks]
    for field, path, dataset in paths:
        if path is not None and not Path(path).exists():
            found.append(f"{field}: {path} does not exist (a local copy of {dataset} in its hub layout is expected)")
        elif path is None and not _hub_dataset_reachable(dataset):
            found.append(f"{field} is not set and {dataset} cannot be fetched: the Hugging Face hub is unreachable "
                         f"and the local cache has no copy; set {field} to a local copy in the hub layout")
    if not found:
        found += _empty_benchmarks(profile)
    return found


def _empty_benchmarks(profile: Profile) -> list[str]:
    """A local benchmark file with no usable row (benchmarks are small: reading them costs a second)."""
    from ..data.hub import load_hub_rows

    found = []
    for bench in profile.data.benchmarks:
        if bench.path:
            loaded = load_hub_rows(bench.source, path=bench.path, limit=1)
            if not loaded.rows:
                found.append(f"data.benchmarks.{bench.name}: no usable rows in {bench.path} "
                             f"(skipped: {loaded.skipped})")
    return found


def _pools(plan: Plan) -> list[str]:
    """Every split a node reads fits the pool it is drawn from. The toy's pools are checked with the profile;
    a hub dataset's sizes are only known once it is loaded."""
    d = plan.profile.data
    if d.source != "hub":
        return []
    from ..data.problems import train_heldout

    source = d.train_path or d.train_dataset
    try:
        train, heldout = train_heldout(d)
    except Exception as err:  # a file in another layout, a download that fails
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return [f"data.train_path: {source} does not load as {d.train_dataset} ({first})"]
    pools = {"labeled": ("labeled_budget", train), "distill": ("distill_prompts", train),
             "heldout": ("heldout_budget", heldout)}
    found = []
    for node in plan.nodes.values():
        split = node.params.get("split")
        if split is None:
            continue
        field, pool = pools[split["name"]]
        line = (f"data.{field} = {split['size']} is larger than its pool: {len(pool)} {split['name']} problems in "
                f"{source}; lower it" + (" (or --labeled-budget)" if field == "labeled_budget" else ""))
        if split["size"] > len(pool) and line not in found:
            found.append(line)
    return found


def _hub_dataset_reachable(name: str) -> bool:
    from huggingface_hub import constants

    from ..data.hub import HUB_DATASETS

    repo = HUB_DATASETS[name].repo_id
    if (Path(constants.HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}").is_dir():
        return True
    if constants.HF_HUB_OFFLINE:
        return False
    try:
        from huggingface_hub import HfApi

        HfApi().dataset_info(repo, timeout=5)
        return True
    except Exception:
        return False


def _disk(plan: Plan, root: Path) -> list[str]:
    """Room for the pending training nodes' models, and for the largest one's checkpoint while it trains."""
    from .cost import arch_of

    params = {}
    for role in BASE_MODELS:
        arch, _ = arch_of(getattr(plan.profile.models, role))
        params[role] = arch.params if arch else 0
    pending = [n for n in plan.nodes.values() if n.kind in TRAINING_KINDS and read_manifest(root, n) is None
               and not (n.kind == "base" and getattr(plan.profile.models, n.params["role"]).source == "hub")]
    sizes = [params[family(n)] for n in pending]
    needed = MODEL_BYTES_PER_PARAM * sum(sizes) + 2 * CHECKPOINT_BYTES_PER_PARAM * max(sizes, default=0)
    free = shutil.disk_usage(root).free
    if needed > free:
        return [f"the artifact root {root} has {free / GIB:.1f} GiB free; the {len(pending)} training nodes to compute "
                f"need about {needed / GIB:.1f} GiB (their models, and two checkpoints of the largest while it "
                "trains): free some space or choose another root with --artifacts"]
    return []
