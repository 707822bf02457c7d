"""Run one DAG node: call its stage, write its manifest last, keep its MLflow run.

Prefect-free, so a node can also be run from a notebook or another orchestrator. A node's
folder is `<artifacts>/<kind>/<key>/`; its `manifest.json` is written atomically after
everything else, so a folder without one is unfinished work that a rerun resumes.
"""

from __future__ import annotations

import hashlib
import logging
import platform
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

from . import data
from .config import DataSpec, Profile
from .dag import MANIFEST, Node, code_fingerprint, node_dir
from .stages.common import write_json
from .tracking import Tracker

log = logging.getLogger("sparse2dense")
PACKAGES = ("torch", "transformers", "trl", "datasets", "math-verify", "mlflow", "prefect")


@lru_cache(maxsize=4)
def _splits(data_json: str) -> dict[str, data.Split]:
    return data.splits(DataSpec.model_validate_json(data_json))


def splits(profile: Profile) -> dict[str, data.Split]:
    return _splits(profile.data.model_dump_json())


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except Exception:
            pass
    return found


def _total_steps(profile: Profile, node: Node) -> int:
    """For progress lines: a stage's planned optimizer steps (0 when it does not train)."""
    if node.kind == "base":
        pretrain = getattr(profile.models, node.params["role"]).pretrain
        return pretrain.max_steps if pretrain else 0
    if node.kind == "forward_kl":
        sequences = profile.data.distill_prompts * profile.rollouts.samples_per_prompt
        return profile.forward_kl.epochs * -(-sequences // profile.forward_kl.batch_size)
    return node.params.get("spec", {}).get("steps", 0)


def run_stage(profile: Profile, node: Node, inputs: dict[str, dict], out: Path, tracker: Tracker | None,
              run_id: str | None) -> tuple[dict, list[data.Split]]:
    """Call the node's stage with its inputs' outputs; returns (stage result, splits it read)."""
    from .stages import base, distill, evaluate, grpo, rollouts

    seed = node.params.get("seed", profile.seed)
    steps = _total_steps(profile, node)
    label = f"{node.kind} {node.name} [{node.key[:8]}]"
    progress = tracker.progress(run_id, label, steps) if tracker else None
    callbacks = [progress] if progress else []
    on_log = progress.record if progress else None
    model_of = {role: manifest["outputs"].get("model") for role, manifest in inputs.items()}
    kind = node.kind
    if kind == "base":
        return base.prepare_base(profile, node.params["role"], out, on_log=on_log), []
    if kind in ("grpo", "replay"):
        split = splits(profile)[node.params["split"]["name"]]
        spec = getattr(profile, node.params["settings"])
        return grpo.grpo(profile, spec, model_of["model"], split, out, seed, callbacks,
                         new_labels=kind == "grpo"), [split]
    if kind == "rollouts":
        split = splits(profile)["distill"]
        return rollouts.rollouts(profile, profile.rollouts, model_of["model"], split, out, seed), [split]
    if kind == "forward_kl":
        rollouts_dir = Path(inputs["rollouts"]["outputs"]["rollouts"]).parent
        return distill.forward_kl(profile, profile.forward_kl, model_of["student"], rollouts_dir, out, seed,
                                  on_log=on_log), []
    if kind == "opd":
        split = splits(profile)["distill"]
        return distill.opd(profile, profile.opd, model_of["teacher"], model_of["student"], split, out, seed,
                           callbacks), [split]
    if kind == "evaluate":
        return evaluate.evaluate(profile, model_of["model"], out, seed), []
    raise ValueError(f"unknown node kind {kind!r}")


def run_node(profile: Profile, node: Node, inputs: dict[str, dict], root: Path,
             tracker: Tracker | None = None, tags: dict[str, str] | None = None) -> dict:
    """Compute a node (resuming any checkpoint in its folder) and return its manifest."""
    out = node_dir(root, node)
    out.mkdir(parents=True, exist_ok=True)
    run_id = tracker.start_node_run(node, out, tags or {}) if tracker else None
    log.info("running %s %s [%s]", node.kind, node.name, node.key)
    try:
        result, used = run_stage(profile, node, inputs, out, tracker, run_id)
    except BaseException:
        if tracker:
            tracker.end_node_run(run_id, ok=False)
        raise
    manifest = {
        "key": node.key, "kind": node.kind, "name": node.name, "params": node.params,
        "inputs": {role: parent.key for role, parent in node.inputs},
        "status": "completed", "mlflow_run_id": run_id, "code_fingerprint": code_fingerprint(),
        "packages": package_versions(), "splits": [s.describe() for s in used], **result,
        "files": _checksums(out),
    }
    write_json(out / MANIFEST, manifest)
    if tracker:
        tracker.log_result(run_id, node, out, manifest,
                           [{**s.describe(), "ids": [r["id"] for r in s.rows]} for s in used])
        tracker.end_node_run(run_id, ok=True)
    return manifest


def _checksums(out: Path) -> dict[str, str]:
    """sha256 of the node's files (models included); checkpoints are transient and skipped."""
    sums = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and not rel.startswith("checkpoints/") and path.name != MANIFEST:
            sums[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sums
