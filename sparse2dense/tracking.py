"""MLflow lineage: an experiment per profile, a run per node, a run per grid execution.

Everything goes through `MlflowClient` with explicit run ids: MLflow's fluent active-run
stack is per thread, and grid nodes run in worker threads.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, LoggedModelStatus, Metric, Param, RunTag
from transformers import TrainerCallback

from .stages.common import read_jsonl

log = logging.getLogger("sparse2dense")

DEFAULT_URI = "sqlite:///mlflow.db"
SECRET_HINTS = ("token", "secret", "password", "api_key", "apikey")
# Checkpoints larger than this are logged by reference (their path), not copied into MLflow.
MAX_MODEL_COPY_BYTES = 200 * 2**20
SAMPLE_ROWS = 200  # problems per benchmark shown in a run's sample table (all of them stay in the node folder)


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_URI)


def scrub(params: dict) -> dict:
    """Drop anything that looks like a credential: tokens never land in params or tags."""
    return {k: v for k, v in params.items() if not any(h in k.lower() for h in SECRET_HINTS)}


def flatten(obj, prefix: str = "") -> dict[str, str]:
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): str(obj)[:6000]}


class Tracker:
    def __init__(self, experiment: str, uri: str | None = None):
        self.client = MlflowClient(uri or tracking_uri())
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self._create(experiment)

    def _create(self, name: str) -> str:
        try:
            return self.client.create_experiment(name)
        except mlflow.exceptions.MlflowException:  # another process created it meanwhile
            return self.client.get_experiment_by_name(name).experiment_id

    # --- node runs ------------------------------------------------------------------

    def start_node_run(self, node, out: Path, tags: dict[str, str]) -> str:
        """The node's run; a retry after a failure reopens the same run and keeps logging into it."""
        marker = out / "mlflow_run_id"
        if marker.exists():
            run_id = marker.read_text().strip()
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=f"{node.name} [{node.key[:8]}]",
                                     tags=scrub({"s2d.key": node.key, "s2d.kind": node.kind,
                                                 "s2d.node": node.name, **tags}))
        params = scrub(flatten(node.params))
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(run.info.run_id)
        return run.info.run_id

    def end_node_run(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, status="FINISHED" if ok else "FAILED")

    def log_metrics(self, run_id: str, metrics: dict, step: int | None = None) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k.replace("@", "_at_"), float(v), now, step or 0)
                 for k, v in metrics.items() if isinstance(v, (int, float))]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_result(self, run_id: str, node, out: Path, manifest: dict, splits: list[dict]) -> None:
        """Final metrics, the manifest, sample tables, dataset inputs and the model."""
        self.log_metrics(run_id, manifest["metrics"])
        self.log_metrics(run_id, {"compute_s": manifest["compute_s"], "labels_used": manifest["labels_used"]})
        self.client.log_artifact(run_id, str(out / "manifest.json"))
        for samples in sorted(out.glob("samples-*.jsonl")):
            self._log_samples(run_id, samples)
        for split in splits:
            self._log_split(run_id, split)
        if manifest["outputs"].get("model"):
            self._log_model(run_id, node, manifest["outputs"]["model"])

    def _log_samples(self, run_id: str, path: Path) -> None:
        # Read as JSON, not through pandas' type inference: AIME's answer "094" must stay "094".
        rows = read_jsonl(path)[:SAMPLE_ROWS]
        table = {"id": [r["id"] for r in rows], "answer": [r["answer"] for r in rows],
                 "completion": [r["completions"][0] for r in rows], "correct": [r["correct"][0] for r in rows],
                 "num_tokens": [r["num_tokens"][0] for r in rows], "truncated": [r["truncated"][0] for r in rows]}
        self.client.log_table(run_id, table, f"samples/{path.stem}.json")

    def _log_split(self, run_id: str, split: dict) -> None:
        import pandas as pd

        dataset = mlflow.data.from_pandas(pd.DataFrame({"id": split["ids"]}), name=split["name"],
                                          digest=split["fingerprint"])
        context = InputTag(mlflow.utils.mlflow_tags.MLFLOW_DATASET_CONTEXT, split["name"])
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), [context])])

    def _log_model(self, run_id: str, node, path: str) -> None:
        """A logged model: its files when small, else a reference to where they live."""
        local = Path(path)
        size = sum(f.stat().st_size for f in local.rglob("*") if f.is_file()) if local.exists() else None
        model = self.client.create_logged_model(
            self.experiment_id, name=node.name.replace("+", "-plus-").replace(":", "-"), source_run_id=run_id,
            tags={"s2d.key": node.key, "s2d.model_path": str(path)}, model_type="causal-lm")
        if size is not None and size <= MAX_MODEL_COPY_BYTES:
            self.client.log_model_artifacts(model.model_id, str(local))
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)

    def progress(self, run_id: str, label: str, total_steps: int) -> _MlflowProgress:
        """One recorder per node: a TrainerCallback for TRL, and `.record` for our own loop."""
        return _MlflowProgress(self, run_id, label, total_steps)

    # --- grid runs ------------------------------------------------------------------

    def start_grid_run(self, name: str, params: dict, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags=scrub({"s2d.kind": "grid", **tags}))
        flat = scrub(flatten(params))
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flat.items()])
        return run.info.run_id

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in scrub(tags).items()])

    def log_files(self, run_id: str, paths: list[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path)


class _MlflowProgress(TrainerCallback):
    """Training curves to MLflow and a progress line (step, ETA) to the log."""

    def __init__(self, tracker: Tracker, run_id: str, label: str, total_steps: int):
        self.tracker, self.run_id, self.label, self.total = tracker, run_id, label, total_steps
        self.start = time.perf_counter()
        self.first_step: int | None = None

    def record(self, step: int, metrics: dict) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step)
        if self.first_step is None:
            self.first_step, self.start = step, time.perf_counter()
            log.info("%s: step %d/%d", self.label, step, self.total)
            return
        rate = (time.perf_counter() - self.start) / max(step - self.first_step, 1)
        log.info("%s: step %d/%d, ETA %.0fs", self.label, step, self.total, rate * (self.total - step))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.record(state.global_step, logs)
