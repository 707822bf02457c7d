"""Shared by the reliability suite: grids run as a user runs them (the `s2d` CLI in a subprocess), faults
injected for real (signals, a dead server, a full disk), and base models computed once and copied."""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PROFILE = str(HERE / "reliable.yaml")


class Grid:
    """One artifact root, MLflow store and Prefect home; `s2d` commands against them, on the suite's Prefect
    server where `prefect_api` is given, else each on a temporary server of its own."""

    def __init__(self, root: Path, prefect_api: str | None = None):
        self.root = root
        self.artifacts = root / "artifacts"
        self.env = {**os.environ, "S2D_ARTIFACTS": str(self.artifacts), "PREFECT_HOME": str(root / "prefect"),
                    "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db", "PYTHONUNBUFFERED": "1"}
        if prefect_api:
            self.env["PREFECT_API_URL"] = prefect_api

    def run(self, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "sparse2dense.cli", *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)

    def start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        """A grid in its own session (so a test can kill everything it started), output to files."""
        path = self.root / f"grid-{time.monotonic_ns()}.log"
        proc = subprocess.Popen([sys.executable, "-m", "sparse2dense.cli", *args], env={**self.env, **(env or {})},
                                stdout=path.open("w"), stderr=subprocess.STDOUT, text=True, start_new_session=True)
        proc.log_path = path
        return proc

    def manifests(self) -> dict[str, dict]:
        return {json.loads(p.read_text())["key"]: json.loads(p.read_text())
                for p in self.artifacts.glob("*/*/manifest.json")}

    def folder(self, name: str) -> Path:
        """The folder of the node the grid calls `name` (the only one with that name in this root)."""
        for path in self.artifacts.glob("*/*/node.json"):
            if json.loads(path.read_text())["name"] == name:
                return path.parent
        raise LookupError(name)


def kill_session(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait()


def wait_for(condition, timeout: float, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"not within {timeout}s")


@pytest.fixture(scope="session")
def based(tmp_path_factory, worker_id, prefect_api) -> Path:
    """A grid root holding the reliable profile's base models. Stage 0 runs once for the whole session: on the
    first worker that asks, while the others wait on a lock in the folder the session's workers share."""
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":  # under xdist each worker's folder sits in the session's
        shared = shared.parent
    root, built = shared / "based", shared / "based.built"
    with (shared / "based.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not built.exists():
            done = Grid(root, prefect_api).run("grid", "--profile", PROFILE, "--arms", "teacher-base,student-base")
            assert done.returncode == 0, done.stderr[-3000:]
            built.touch()
    return root


def copy_root(source: Path, target: Path, prefect_api: str | None = None) -> Grid:
    """A grid on a copy of `source`'s artifacts and MLflow store (mtimes kept), with its own Prefect home."""
    shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("prefect", ".prefect", "*.log"))
    return Grid(target, prefect_api)


@pytest.fixture
def grid(based, tmp_path, prefect_api) -> Grid:
    """A fresh grid that starts with the base models and their MLflow runs, on the suite's Prefect server."""
    return copy_root(based, tmp_path, prefect_api)


@pytest.fixture
def lone_grid(based, tmp_path) -> Grid:
    """The same, with each `s2d` command on a temporary Prefect server of its own, as `s2d grid` runs alone."""
    return copy_root(based, tmp_path)
