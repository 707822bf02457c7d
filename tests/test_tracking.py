"""Progress lines of a node's training, through a real (SQLite) MLflow store."""

import logging

from transformers import TrainerState


def test_an_epoch_based_stage_reports_progress_against_the_trainers_step_count(tmp_path, monkeypatch, caplog):
    """Forward KL runs by epochs, so its node learns the step count only when the trainer starts."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    from sparse2dense.tracking import Tracker

    tracker = Tracker("s2d-progress")
    progress = tracker.progress(None, "forward_kl fkl-only", total_steps=0)
    state = TrainerState(max_steps=40)
    with caplog.at_level(logging.INFO, logger="sparse2dense"):
        for step in (10, 20, 40):
            state.global_step = step
            progress.on_log(None, state, None, logs={"loss": 1.0})
    lines = [r.getMessage() for r in caplog.records if "fkl-only" in r.getMessage()]
    assert lines[0] == "forward_kl fkl-only: step 10/40"
    assert lines[1].startswith("forward_kl fkl-only: step 20/40, ETA ") and not lines[1].endswith("-0s")
    assert lines[2] == "forward_kl fkl-only: step 40"


def test_two_grids_started_at_once_share_a_fresh_sqlite_store(tmp_path, prefect_api):
    """Both create MLflow's schema on first use; without a lock they race through its migrations and fail."""
    import os
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    runs = [subprocess.Popen([sys.executable, "-m", "sparse2dense.cli", "grid", "--profile", "smoke",
                              "--arms", "student-base"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "MLFLOW_TRACKING_URI": uri, "S2D_ARTIFACTS": str(tmp_path / f"a{i}"),
                                  "PREFECT_HOME": str(tmp_path / f"prefect{i}"), "PREFECT_API_URL": prefect_api})
            for i in range(2)]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(out[-2000:] for out in outputs)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    names = [r.data.tags.get("mlflow.runName", "").split(" [")[0] for r in runs]
    assert names.count("student") == names.count("evaluate:student-base") == 2  # each grid logged its nodes
