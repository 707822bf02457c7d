"""Shared fixtures: the smoke profile's base models, built once per test session by stage 0, and one Prefect
server for the grids run in subprocesses."""

import os
import signal
import subprocess
import tempfile
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Each pytest process (each xdist worker) its own Prefect home: no two temporary servers share a database.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="s2d-prefect-home-")


@pytest.fixture(scope="session")
def smoke():
    from sparse2dense.config import load_profile

    return load_profile("smoke")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One Prefect server for the grids the suite runs in subprocesses (PREFECT_API_URL, as under `make ui`):
    alone, each `s2d grid` starts a temporary server of its own (5 s, more in a fresh home, which it migrates)
    and stops it (2 s).
    The tests of that temporary server (a newcomer's first grid, a stop signal, what Prefect's database
    holds) keep it."""
    from sparse2dense import servers

    home = tmp_path_factory.mktemp("prefect-server")
    server = servers.Server("prefect", servers.free_port(), "/api/health")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen(server.command(home), env=env, stdout=(home / "server.log").open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while not servers.healthy(server):
        assert proc.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
        time.sleep(0.2)
    yield f"{server.url}/api"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.fixture(scope="session")
def bases(smoke, tmp_path_factory):
    """Pretrained smoke teacher and student model folders."""
    from sparse2dense.stages.base import prepare_base

    root = tmp_path_factory.mktemp("bases")
    return {role: prepare_base(smoke, role, getattr(smoke.models, role), root / role, smoke.seed)["outputs"]["model"]
            for role in ("teacher", "student")}


# The modules that take longest on 2 cores, longest first: `make test` spreads whole modules over 2 workers
# (pytest-xdist, --dist loadfile) in this order, and a long module started last would run on alone.
LONGEST_FIRST = ("test_fsdp", "test_scale", "test_crash_resume", "test_grid", "test_integrity", "test_ui",
                 "test_faults", "test_vllm", "test_hub_smoke", "test_gpu_check", "test_stage0", "test_tracking")


def _rank(item) -> int:
    name = item.module.__name__.rsplit(".", 1)[-1]
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(session, config, items):
    """Longest modules first; and the GPU set's dry runs, which wait on the network for minutes, start now,
    behind the CPU-bound tests (once, whichever worker runs their tests)."""
    items.sort(key=_rank)  # stable: within a module, the order of the file
    first_worker = getattr(config, "workerinput", {}).get("workerid", "gw0") == "gw0"
    if first_worker and any(item.module.__name__.endswith("test_gpu_env") for item in items):
        from test_gpu_env import dry_run_folder, start_dry_runs

        start_dry_runs(dry_run_folder(config))
