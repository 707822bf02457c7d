"""A killed grid resumes instead of hanging: SIGKILL at chosen and at random moments, then the same command."""

import json
import random
import signal
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from sparse2dense.config import load_grid, load_profile
from sparse2dense.planning import dag

from .conftest import PROFILE, kill_session, wait_for

pytestmark = pytest.mark.slow
RERUN_LIMIT_S = 300  # a rerun that waited on a dead grid's lock would run into this


def checkpoint(grid, name: str, step: int):
    def found():
        try:
            return (grid.folder(name) / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").exists()
        except LookupError:
            return False
    return found


def test_sigkill_mid_training_then_rerun_resumes_from_the_checkpoint(grid):
    proc = grid.start("grid", "--profile", PROFILE, "--arms", "teacher-grpo")
    wait_for(checkpoint(grid, "teacher-grpo", 8), 300)
    kill_session(proc)  # the whole session: grid, its Prefect server, everything, as a lost machine would
    lock = list((grid.artifacts / ".prefect" / "locks").glob("*.lock"))
    assert lock, "the killed grid held its node's lock"

    done = grid.run("grid", "--profile", PROFILE, "--arms", "teacher-grpo", timeout=RERUN_LIMIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"breaking the lock of node {lock[0].stem}" in done.stderr
    node = json.loads((grid.folder("teacher-grpo") / "manifest.json").read_text())
    assert node["resumed_from_step"] >= 8
    assert node["metrics"]["steps"] == 24  # the same optimizer steps as an uninterrupted run


def test_sigkill_mid_generation_recomputes_the_node(grid):
    proc = grid.start("grid", "--profile", PROFILE, "--arms", "direct-grpo")
    evaluation = wait_for(lambda: _unfinished(grid, "evaluate:direct-grpo"), 300, every=0.05)
    kill_session(proc)
    assert not (evaluation / "manifest.json").exists()
    done = grid.run("grid", "--profile", PROFILE, "--arms", "direct-grpo", timeout=RERUN_LIMIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    node = json.loads((grid.folder("evaluate:direct-grpo") / "manifest.json").read_text())
    assert node["status"] == "completed" and node["resumed_from_step"] is None


def test_sigkill_at_random_moments_loses_nothing(grid):
    """Killed four times at random moments (training, sampling, a manifest or checkpoint write, holding a lock),
    the grid still finishes on the next run, and every finished node is intact."""
    rng = random.Random(7)
    arms = "teacher-grpo,direct-grpo,fkl-only"
    keys = set(dag.plan(load_profile(PROFILE), load_grid("allocation"), arms.split(","), [0]).nodes)

    def left() -> int:
        return len(keys - set(grid.manifests()))

    kills = 0  # of a grid that still had nodes to compute (a faster machine finishes sooner: fewer kills)
    for _ in range(4):
        if not left():
            break
        proc = grid.start("grid", "--profile", PROFILE, "--arms", arms)
        time.sleep(rng.uniform(4, 30))
        if proc.poll() is None:
            kill_session(proc)
            kills += left() > 0
    assert kills >= 1, "no kill came before the grid was done"
    unfinished = left()
    done = grid.run("grid", "--profile", PROFILE, "--arms", arms, timeout=RERUN_LIMIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"{kills} kills at random moments with nodes left, then a complete run of the {unfinished} nodes left")
    report = json.loads(grid.run("report", "--profile", PROFILE, "--arms", arms, "--format", "json").stdout)
    assert all(r["status"] == "completed" for r in report)
    # Every manifest the kills left behind still describes intact files: the next run reuses them all.
    again = grid.run("grid", "--profile", PROFILE, "--arms", arms, timeout=RERUN_LIMIT_S)
    assert "0 to compute" in again.stderr, again.stderr[-2000:]


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigint_and_sigterm_stop_cleanly(lone_grid, sig, code):
    """Ctrl-C or a cancelled run stops `s2d grid` alone: its node, its locks and its temporary Prefect server."""
    grid = lone_grid
    long = grid.root / "long.yaml"  # GRPO long enough to be mid-training when the signal comes
    long.write_text(yaml.safe_dump({"extends": PROFILE, "name": "reliable", "grpo": {"steps": 400}}))
    proc = grid.start("grid", "--profile", str(long), "--arms", "teacher-grpo")
    wait_for(checkpoint(grid, "teacher-grpo", 4), 300)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == code
    last = [line for line in _log(proc).splitlines() if line.strip()][-1]
    assert f"stopped by {sig.name}" in last and "run the same command again to resume" in last
    assert not list((grid.artifacts / ".prefect" / "locks").glob("*.lock"))  # locks released
    client = MlflowClient(grid.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("s2d-reliable")
    runs = client.search_runs([experiment.experiment_id], "tags.`s2d.node` = 'teacher-grpo'")
    assert [r.info.status for r in runs] == ["KILLED"]
    assert wait_for(lambda: not _left_in_group(proc.pid), 30)  # its temporary Prefect server went with it


def _unfinished(grid, name: str):
    try:
        folder = grid.folder(name)
    except LookupError:
        return None
    return folder if not (folder / "manifest.json").exists() else None


def _left_in_group(pgid: int) -> list[str]:
    """Live processes of the process group the grid led."""
    left = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if state != "Z" and int(group) == pgid:
            left.append(stat.parent.name)
    return left


def _log(proc) -> str:
    return proc.log_path.read_text()
