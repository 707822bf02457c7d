"""Faults outside the process: the tracking server goes away mid-grid; the disk fills during a checkpoint write."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from transformers import TrainerCallback

from sparse2dense import servers

from .conftest import PROFILE, wait_for

pytestmark = pytest.mark.slow


class MlflowServer:
    """A real `mlflow server` on a loopback port, stopped and restarted on the same store."""

    def __init__(self, root: Path):
        self.root, self.port = root, servers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                   str(self.port), "--backend-store-uri", f"sqlite:///{self.root}/server.db",
                   "--artifacts-destination", str(self.root / "server-artifacts"), "--workers", "1"]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for(lambda: servers.healthy(servers.Server("mlflow", self.port, "/health")), 120)

    def kill(self):
        os.killpg(self.proc.pid, 9)
        self.proc.wait()


def test_the_tracking_server_going_away_loses_no_result(grid):
    server = MlflowServer(grid.root)
    server.start()
    env = {"MLFLOW_TRACKING_URI": server.url}
    arms = "teacher-grpo,direct-grpo"
    try:
        proc = grid.start("grid", "--profile", PROFILE, "--arms", arms, env=env)
        first = wait_for(lambda: _tracked(grid, "teacher-grpo"), 300)  # a node logged while the server was up
        server.kill()
        assert proc.wait(timeout=600) == 0, proc.log_path.read_text()[-3000:]
        manifests = grid.manifests()
        report = grid.run("report", "--profile", PROFILE, "--arms", arms, "--format", "json")
        assert '"missing"' not in report.stdout  # every node finished and its results are on disk
        untracked = [m["name"] for m in manifests.values() if not m["tracked"]]
        assert untracked and first["tracked"]
        server.start()  # back, on the same store
        done = grid.run("sync", "--profile", PROFILE, "--arms", arms, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"{len(untracked)} node(s) logged to MLflow" in done.stdout
        assert all(m["tracked"] for m in grid.manifests().values() if m["name"] in untracked)
        client = MlflowClient(server.url)
        experiment = client.get_experiment_by_name("s2d-reliable")
        logged = {r.data.tags["s2d.node"] for r in client.search_runs([experiment.experiment_id],
                                                                      "tags.`s2d.kind` != 'grid'")}
        assert set(untracked) <= logged
    finally:
        if server.proc and server.proc.poll() is None:
            server.kill()


def _tracked(grid, name):
    try:
        path = grid.folder(name) / "manifest.json"
    except LookupError:
        return None
    manifest = json.loads(path.read_text()) if path.exists() else {}
    return manifest if manifest.get("tracked") else None


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs: a real filesystem that fills up (needs root, as CI has)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


class FillTheDisk(TrainerCallback):
    """After the checkpoint at `step`, fill the disk, so the next checkpoint write runs out of space."""

    def __init__(self, folder: Path, step: int):
        self.folder, self.step = folder, step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            with (self.folder / "ballast").open("wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass


def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_checkpoint(smoke, bases, small_disk):
    from sparse2dense.data import problems
    from sparse2dense.stages.distill import forward_kl
    from sparse2dense.stages.rollouts import rollouts

    out = small_disk / "fkl"
    rollouts_dir = small_disk.parent / "rollouts"
    rollouts(smoke, smoke.rollouts, bases["teacher"], problems.split(smoke.data, "distill"), rollouts_dir, seed=0)
    spec = smoke.forward_kl.model_copy(update={"save_steps": 1})
    with pytest.raises((OSError, RuntimeError)):
        forward_kl(smoke, spec, bases["student"], rollouts_dir, out, seed=0, callbacks=[FillTheDisk(small_disk, 1)])
    assert (out / "checkpoints" / "checkpoint-1" / "trainer_state.json").exists()
    (small_disk / "ballast").unlink()
    shutil.rmtree(out / "model", ignore_errors=True)
    start = time.monotonic()
    done = forward_kl(smoke, spec, bases["student"], rollouts_dir, out, seed=0)
    assert done["resumed_from_step"] == 1 and done["metrics"]["steps"] == 4
    print(f"resumed from the checkpoint before the full disk in {time.monotonic() - start:.1f}s")
