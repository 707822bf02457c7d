"""Run one DAG node: call its stage, write its manifest last, keep its MLflow run.

Prefect-free, so a node can also be run from a notebook or another orchestrator. A node's
folder is `<artifacts>/<kind>/<key>/`; its `manifest.json` is written atomically after
everything else, so a folder without one is unfinished work that a rerun resumes.

A stage reads its own settings from the node's params (what its key hashes). From the profile it
also reads `data` (splits, prompt format, answer checker), `hardware` (device, precision, threads)
and `generation` (the sampling backend); the parts of those a result depends on are in the key too
(`planning.dag.stage_params`). Under `accelerate launch` every rank runs the stage; only the main
process writes the manifest and the MLflow records.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from ..config import BenchmarkSpec, EvaluateSpec, ForwardKLSpec, GRPOSpec, ModelSpec, OPDSpec, Profile, RolloutsSpec
from ..data import problems
from ..planning.dag import MANIFEST, NODE_FILE, SPEC, SPLITS_FILE, NodeSpec, code_fingerprint, planned_steps
from ..stages.common import CHECKPOINTS, is_main_process, write_json

if TYPE_CHECKING:  # MLflow is imported only by a node that tracks: a launched node without it runs without MLflow
    from ..tracking import Tracker

log = logging.getLogger("sparse2dense")


class NodeTimeout(RuntimeError):
    """A node ran past its wall-clock limit (resources.<kind>.timeout_s); it is not retried."""


class Deadline(TrainerCallback):
    """Inline nodes cannot be killed: training stops at the first optimizer step past the limit, saving a
    checkpoint first, and the node fails with NodeTimeout. Generation and evaluation run to their end."""

    def __init__(self, seconds: float):
        self.seconds, self.at, self.expired = seconds, time.monotonic() + seconds, False

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() > self.at:
            self.expired = control.should_save = control.should_training_stop = True


def launched_env() -> dict[str, str]:
    """The environment of a node launched from this process: unbuffered lines for the relay; this pid, which its
    ranks watch (S2D_LAUNCHER_PID, `launched.watch_launcher`); and no MLflow import in every rank by TRL's
    profiling (about 1.5 s of start-up each; the main rank imports MLflow itself, to track)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "S2D_LAUNCHER_PID": str(os.getpid()),
            "DISABLE_MLFLOW_INTEGRATION": "TRUE"}


PACKAGES = ("torch", "transformers", "trl", "accelerate", "datasets", "math-verify", "mlflow", "prefect")


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except Exception:
            pass
    return found


def _split(profile: Profile, params: dict) -> problems.Split:
    """The split a node's params define (its size included: a budget sweep changes only that)."""
    return problems.split(profile.data, params["split"]["name"], params["split"]["size"])


def run_stage(profile: Profile, node: NodeSpec, inputs: dict[str, dict], out: Path,
              callbacks: list) -> tuple[dict, list[problems.Split]]:
    """Call the node's stage with its inputs' outputs; returns (stage result, splits it read)."""
    from ..stages import base, distill, evaluate, grpo, rollouts

    p, kind = node.params, node.kind
    seed = p.get("seed", profile.seed)
    model_of = {role: manifest["outputs"].get("model") for role, manifest in inputs.items()}
    if kind == "base":
        spec = getattr(profile.models, p["role"])
        if spec.source == "toy":  # the key hashes the toy model's whole definition
            spec = ModelSpec.model_validate(p["model"])
        return base.prepare_base(profile, p["role"], spec, out, seed, callbacks), []
    if kind in ("grpo", "replay"):
        split = _split(profile, p)
        return grpo.grpo(profile, GRPOSpec.model_validate(p["spec"]), model_of["model"], split, out, seed,
                         callbacks, new_labels=kind == "grpo"), [split]
    if kind == "rollouts":
        split = _split(profile, p)
        return rollouts.rollouts(profile, RolloutsSpec.model_validate(p["spec"]), model_of["model"], split, out,
                                 seed), [split]
    if kind == "forward_kl":
        rollouts_dir = Path(inputs["rollouts"]["outputs"]["rollouts"]).parent
        return distill.forward_kl(profile, ForwardKLSpec.model_validate(p["spec"]), model_of["student"],
                                  rollouts_dir, out, seed, callbacks), []
    if kind == "opd":
        split = _split(profile, p)
        return distill.opd(profile, OPDSpec.model_validate(p["spec"]), model_of["teacher"], model_of["student"],
                           split, out, seed, callbacks), [split]
    if kind == "evaluate":
        benchmarks = [_benchmark(b, profile) for b in p["benchmarks"]]
        return evaluate.evaluate(profile, EvaluateSpec.model_validate(p["spec"]), benchmarks, model_of["model"],
                                 out, seed), []
    raise ValueError(f"unknown node kind {kind!r}")


def _benchmark(params: dict, profile: Profile) -> BenchmarkSpec:
    """A benchmark from the node's params; its file (keyed by content) is where the profile says."""
    path = next(b.path for b in profile.data.benchmarks if b.name == params["name"])
    return BenchmarkSpec.model_validate({k: v for k, v in params.items() if k != "file"} | {"path": path})


def run_node(profile: Profile, node: NodeSpec, inputs: dict[str, dict], root: Path,
             tracker: Tracker | None = None, tags: dict[str, str] | None = None,
             timeout_s: float | None = None) -> dict | None:
    """Compute a node (resuming any checkpoint in its folder); returns its manifest (None off the main process).

    `timeout_s` is the inline limit (see Deadline); launched nodes are timed out by their launcher.
    """
    out = Path(root) / node.kind / node.key
    out.mkdir(parents=True, exist_ok=True)
    main = is_main_process()
    if main:
        write_json(out / NODE_FILE, node.to_json())  # what this folder is, from the moment it starts
    tracker = tracker if main else None
    run_id = tracker.start_node_run(node, out, tags or {}) if tracker else None
    callbacks = [tracker.progress(run_id, f"{node.kind} {node.name} [{node.key[:8]}]", planned_steps(node))] \
        if tracker else []
    deadline = Deadline(timeout_s) if timeout_s else None
    started = _now()
    log.info("running %s %s [%s]", node.kind, node.name, node.key)
    try:
        result, used = run_stage(profile, node, inputs, out, callbacks + ([deadline] if deadline else []))
        if deadline and deadline.expired:
            raise NodeTimeout(f"{node.kind} {node.name} [{node.key[:8]}] ran past its limit of {timeout_s:.0f}s; "
                              "training stopped at a checkpoint, which the next run resumes")
    except BaseException:
        if tracker:
            tracker.end_node_run(run_id, ok=False)
        raise
    if not main:
        return None
    write_json(out / SPLITS_FILE, [{**s.describe(), "ids": [r["id"] for r in s.rows]} for s in used])
    manifest = {
        **node.to_json(), "status": "completed", "mlflow_run_id": run_id, "mlflow_model_id": None, "tracked": False,
        "code_fingerprint": code_fingerprint(), "packages": package_versions(), "host": platform.node(),
        "pid": os.getpid(), "devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "started_at": started,
        "finished_at": _now(), "splits": [s.describe() for s in used], **result, "files": _checksums(out),
    }
    write_json(out / MANIFEST, manifest)  # the node is done from here on, tracked or not
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # only a run in progress resumes from them
    if tracker:
        manifest = record(tracker, node, out, manifest, inputs, run_id)
    return manifest


def record(tracker: Tracker, node: NodeSpec, out: Path, manifest: dict, inputs: dict[str, dict],
           run_id: str | None) -> dict:
    """Log a finished node to MLflow from its folder and note in its manifest whether that went through.

    Used as a node ends and again, by `sync`, for a node whose tracking server was away.
    """
    extra = tracker.log_result(run_id, node, out, manifest, inputs)
    tracker.end_node_run(run_id, ok=True)
    manifest = {**manifest, "mlflow_run_id": run_id, **extra}
    write_json(out / MANIFEST, manifest)
    return manifest


def sync(tracker: Tracker, node: NodeSpec, out: Path, manifest: dict, inputs: dict[str, dict],
         tags: dict[str, str]) -> dict:
    """Log a node computed while MLflow was unreachable: its run (curves included) and its results."""
    run_id = manifest.get("mlflow_run_id") or tracker.start_node_run(node, out, tags)
    tracker.log_curves(run_id, out)
    return record(tracker, node, out, manifest, inputs, run_id)


def sync_untracked(plan, root: Path, tracker: Tracker, tags: dict[str, str], skip: set[str] = frozenset()) -> int:
    """Log every finished node of `plan` whose MLflow record is missing (its server was away); returns how many."""
    from ..planning.dag import node_dir, node_tags, read_manifest

    synced = 0
    for key, node in plan.nodes.items():
        manifest = read_manifest(root, node)
        if key in skip or manifest is None or manifest.get("tracked", True):
            continue
        log.info("logging %s %s [%s] to MLflow (it finished while tracking was away)", node.kind, node.name, key[:8])
        inputs = {role: read_manifest(root, parent) or {} for role, parent in node.inputs}
        sync(tracker, node.spec(), node_dir(root, node), manifest, inputs, {**tags, **node_tags(plan, key)})
        synced += 1
    return synced


def _now() -> str:
    return datetime.now(UTC).isoformat()


_NOT_RESULTS = (MANIFEST, NODE_FILE, SPEC, "mlflow_run_id")  # bookkeeping, rewritten after the results


def _checksums(out: Path) -> dict[str, dict]:
    """sha256, size and mtime of the node's files (models included); checkpoints are transient and skipped."""
    sums = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and not rel.startswith("checkpoints/") and rel not in _NOT_RESULTS:
            stat = path.stat()
            sums[rel] = {"sha256": _sha256(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return sums


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()
