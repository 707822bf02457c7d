"""MLflow lineage: an experiment per profile, a run per node, a run per grid execution.

Everything goes through `MlflowClient` with explicit run ids: MLflow's fluent active-run
stack is per thread, and grid nodes run in worker threads.

MLflow's own views do the comparing: each node's model is a LoggedModel; a node run logs the
LoggedModels it consumed as model inputs; evaluation metrics are logged against the evaluated
model and each benchmark's dataset, so the Models tab ranks models per benchmark; every run
carries `s2d.arm` (all arms it serves) and `s2d.seed`, so the runs table groups seeds.

Tracking never costs a result: if the tracking server goes away, the node finishes, its
manifest says `tracked: false`, and the next `s2d grid` (or `s2d sync`) logs it from its folder.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, LoggedModelInput, LoggedModelStatus, Metric, Param, RunTag
from transformers import TrainerCallback

from .locations import tracking_uri
from .planning.dag import SPLITS_FILE
from .stages.common import read_jsonl

log = logging.getLogger("sparse2dense")

SECRET_HINTS = ("token", "secret", "password", "api_key", "apikey")
# Checkpoints larger than this are logged by reference (their path), not copied into MLflow.
MAX_MODEL_COPY_BYTES = 200 * 2**20
SAMPLE_ROWS = 200  # problems per benchmark shown in a run's sample table (all of them stay in the node folder)

# A tracking server that is down must cost seconds, not MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

OPEN_RUNS: set[str] = set()  # runs this process opened and has not ended, marked KILLED on a clean stop
_OPEN_LOCK = threading.Lock()


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: `$S2D_MLFLOW_ARTIFACTS`, else beside a SQLite store's
    database (not MLflow's `./mlruns` in whatever directory the command ran), else the server decides."""
    chosen = os.environ.get("S2D_MLFLOW_ARTIFACTS")
    if chosen:
        return (Path(chosen).resolve() / experiment).as_uri()
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///")).resolve()
        return (database.parent / "mlartifacts" / experiment).as_uri()
    return None


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


def mark_open_runs_killed() -> list[str]:
    """On SIGINT/SIGTERM: every run this process left open is marked KILLED (best effort)."""
    with _OPEN_LOCK:
        runs = list(OPEN_RUNS)
        OPEN_RUNS.clear()
    if not runs:  # opening the store would create one in the working directory, and a kill could cut that short
        return []
    client = open_client(tracking_uri())
    for run_id in runs:
        try:
            client.set_terminated(run_id, status="KILLED")
        except Exception:
            pass
    return runs


def _unreachable(err: Exception) -> bool:
    text = f"{type(err).__name__}: {err}"
    return any(s in text for s in ("ConnectionError", "Connection refused", "Max retries exceeded", "Timeout",
                                   "timed out", "API request to", "database is locked"))


def open_client(uri: str) -> MlflowClient:
    """MLflow creates a SQLite store's schema when a process first opens it, and processes that start at once
    on a fresh file race through its migrations and fail; a lock beside the database makes them take turns."""
    if not uri.startswith("sqlite:///"):
        return MlflowClient(uri)
    from filelock import FileLock

    with FileLock(uri.removeprefix("sqlite:///") + ".lock", timeout=300):
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    return client


class Tracker:
    """Best effort: a failing call is logged and skipped; an unreachable server stops further calls."""

    def __init__(self, experiment: str, uri: str | None = None):
        self.uri = uri or tracking_uri()
        self.experiment = experiment
        self.client = open_client(self.uri)
        self.down = False  # the server stopped answering: skip the rest, the manifest says what is missing
        self.complete = True  # every call so far went through
        self._experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            self._experiment_id = found.experiment_id if found else self._create()
        return self._experiment_id

    def _create(self) -> str:
        try:
            return self.client.create_experiment(self.experiment,
                                                 artifact_location=artifact_location(self.uri, self.experiment))
        except mlflow.exceptions.MlflowException:  # another process created it meanwhile
            return self.client.get_experiment_by_name(self.experiment).experiment_id

    def safely(self, what: str, fn, *args, **kwargs):
        if self.down:
            self.complete = False
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # a tracking failure never fails the node: its folder holds the result
            self.complete = False
            self.down = _unreachable(err)
            log.warning("MLflow: %s failed (%s: %s)%s", what, type(err).__name__, str(err)[:200],
                        "; tracking paused, results stay in their folders for `s2d sync`" if self.down else "")
            return None

    # --- node runs ------------------------------------------------------------------

    def start_node_run(self, node, out: Path, tags: dict[str, str]) -> str | None:
        """The node's run; a retry after a failure reopens the same run and keeps logging into it."""
        return self.safely("starting the node run", self._start_node_run, node, out, tags)

    def _start_node_run(self, node, out: Path, tags: dict[str, str]) -> str:
        marker = out / "mlflow_run_id"
        if marker.exists():
            run_id = marker.read_text().strip()
            self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=f"{node.name} [{node.key[:8]}]",
                                         tags=scrub({"s2d.key": node.key, "s2d.kind": node.kind,
                                                     "s2d.node": node.name, **tags}))
            run_id = run.info.run_id
            params = scrub(flatten(node.params))
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
            out.mkdir(parents=True, exist_ok=True)
            marker.write_text(run_id)
        with _OPEN_LOCK:
            OPEN_RUNS.add(run_id)
        return run_id

    def end_node_run(self, run_id: str | None, ok: bool) -> None:
        if run_id:
            self.safely("ending the node run", self.client.set_terminated, run_id,
                         status="FINISHED" if ok else "FAILED")
            with _OPEN_LOCK:
                OPEN_RUNS.discard(run_id)

    def log_metrics(self, run_id: str | None, metrics: dict, step: int | None = None, **scope) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k.replace("@", "_at_"), float(v), now, step or 0, **scope)
                 for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if run_id and batch:
            self.safely("logging metrics", self.client.log_batch, run_id, metrics=batch)

    def log_result(self, run_id: str | None, node, out: Path, manifest: dict, inputs: dict[str, dict]) -> dict:
        """Final metrics, the manifest, samples, dataset and model inputs, the model; returns what to add to the
        manifest (the logged model's id, and whether everything was logged)."""
        if not run_id:
            return {"tracked": False}
        model_inputs = [LoggedModelInput(m["mlflow_model_id"]) for m in inputs.values() if m.get("mlflow_model_id")]
        if model_inputs:
            self.safely("logging model inputs", self.client.log_inputs, run_id, models=model_inputs)
        if node.kind == "evaluate":
            self._log_evaluation(run_id, manifest, inputs["model"].get("mlflow_model_id"))
        else:
            self.log_metrics(run_id, manifest["metrics"])
        self.log_metrics(run_id, {"compute_s": manifest["compute_s"], "labels_used": manifest["labels_used"],
                                  **skipped_rows(manifest)})
        self.safely("logging the manifest", self.client.log_artifact, run_id, str(out / "manifest.json"))
        for samples in sorted(out.glob("samples-*.jsonl")):
            self.safely("logging samples", self._log_samples, run_id, samples)
        for split in _read_splits(out):
            self.safely("logging a dataset input", self._log_split, run_id, split)
        model_id = None
        if manifest["outputs"].get("model"):
            model_id = self.safely("logging the model", self._log_model, run_id, node, manifest["outputs"]["model"])
        return {"mlflow_model_id": model_id, "tracked": self.complete}

    def _log_evaluation(self, run_id: str, manifest: dict, model_id: str | None) -> None:
        """Each benchmark's metrics against the evaluated model and that benchmark's dataset."""
        benchmarks = manifest.get("benchmarks", {})
        for name, bench in benchmarks.items():
            scores = {k.split("/", 1)[1]: v for k, v in manifest["metrics"].items() if k.startswith(f"{name}/")}
            self.log_metrics(run_id, {f"{name}/{k}": v for k, v in scores.items()}, model_id=model_id,
                             dataset_name=name, dataset_digest=bench["fingerprint"])
        rest = {k: v for k, v in manifest["metrics"].items() if k.split("/", 1)[0] not in benchmarks}
        self.log_metrics(run_id, rest)

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

    def _log_model(self, run_id: str, node, path: str) -> str:
        """A logged model: its files when small, else a reference to where they live."""
        local = Path(path)
        size = sum(f.stat().st_size for f in local.rglob("*") if f.is_file()) if local.exists() else None
        model = self.client.create_logged_model(
            self.experiment_id, name=node.name.replace("+", "-plus-").replace(":", "-"), source_run_id=run_id,
            tags={"s2d.key": node.key, "s2d.model_path": str(path)}, model_type="causal-lm")
        if size is not None and size <= MAX_MODEL_COPY_BYTES:
            self.client.log_model_artifacts(model.model_id, str(local))
        self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return model.model_id

    def log_curves(self, run_id: str, out: Path) -> None:
        """Training curves from the trainer's log history (a run logged after the fact)."""
        history = out / "log_history.json"
        if run_id and history.exists():
            for entry in json.loads(history.read_text()):
                self.log_metrics(run_id, {k: v for k, v in entry.items() if k != "step"}, entry.get("step"))

    def progress(self, run_id: str | None, label: str, total_steps: int) -> _MlflowProgress:
        """One recorder per node: training curves to MLflow, progress lines to the log."""
        return _MlflowProgress(self, run_id, label, total_steps)

    # --- grid runs ------------------------------------------------------------------

    def start_grid_run(self, name: str, params: dict, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name, tags=scrub({"s2d.kind": "grid", **tags}))
        flat = scrub(flatten(params))
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flat.items()])
        with _OPEN_LOCK:
            OPEN_RUNS.add(run.info.run_id)
        return run.info.run_id

    def end_grid_run(self, run_id: str, ok: bool) -> None:
        self.end_node_run(run_id, ok)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in scrub(tags).items()])

    def log_files(self, run_id: str, paths: list[Path], artifact_path: str | None = None) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path)


def skipped_rows(manifest: dict) -> dict[str, int]:
    """Unusable source rows by split (or benchmark) and reason, as `skipped/<split>/<reason>` metrics."""
    read = [*manifest.get("splits", []), *manifest.get("benchmarks", {}).values()]
    return {f"skipped/{s['name']}/{reason}": n for s in read for reason, n in s.get("skipped", {}).items()}


def _read_splits(out: Path) -> list[dict]:
    path = out / SPLITS_FILE
    return json.loads(path.read_text()) if path.exists() else []


class _MlflowProgress(TrainerCallback):
    """Training curves to MLflow and a progress line (step, ETA) to the log."""

    def __init__(self, tracker: Tracker, run_id: str | None, label: str, total_steps: int):
        self.tracker, self.run_id, self.label, self.total = tracker, run_id, label, total_steps
        self.start = time.perf_counter()
        self.first_step: int | None = None

    def record(self, step: int, metrics: dict) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step)
        if self.first_step is None:
            self.first_step, self.start = step, time.perf_counter()
            log.info("%s: step %d/%d", self.label, step, self.total)
            return
        if self.total <= step:  # a total not known up front (epochs) or already passed: no ETA to give
            log.info("%s: step %d", self.label, step)
            return
        rate = (time.perf_counter() - self.start) / max(step - self.first_step, 1)
        log.info("%s: step %d/%d, ETA %.0fs", self.label, step, self.total, rate * (self.total - step))

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.total = self.total or state.max_steps  # epoch-based stages: the trainer knows it once it starts
        if logs and "train_runtime" not in logs:  # the trainer's closing summary is not a step
            self.record(state.global_step, logs)
