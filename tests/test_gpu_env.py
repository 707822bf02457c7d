"""The GPU sets resolve: the grid's (`make setup GPU=1`) and the node runtime's (`make node-runtime GPU=1`),
by pip's own resolver, dry run, against the package registry.

A bump that breaks the set (a vLLM outside TRL's range, a transformers outside vLLM's bounds, a fastapi
conflict with Prefect) fails here, in CI, not on somebody's GPU machine. Nothing is installed: pip reads
the wheels' metadata (`fast-deps` fetches only the part of each wheel it needs). The dry runs wait on the
network for minutes, so they start as soon as the session has collected these tests (tests/conftest.py)
and run while the rest of the suite computes.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "configs" / "gpu-constraints.txt"
NODE_CONSTRAINTS = REPO / "configs" / "gpu-node-constraints.txt"
pytestmark = pytest.mark.slow


def dry_run_folder(config) -> Path:
    """Where this test session's dry runs write: one folder for all of its xdist workers."""
    session = getattr(config, "workerinput", {}).get("testrunuid") or str(os.getpid())
    return Path(tempfile.gettempdir()) / f"s2d-gpu-sets-{session}"


def start_dry_runs(folder: Path) -> None:
    """The shipped sets, and one with a pin that cannot resolve (vLLM 0.31 with transformers 5.24)."""
    folder.mkdir(parents=True)
    broken = folder / "broken.txt"
    pins = [line for line in CONSTRAINTS.read_text().splitlines() if not line.startswith(("vllm==", "transformers=="))]
    broken.write_text("\n".join([*pins, "vllm==0.31.0", "transformers==5.24.0"]) + "\n")
    node = ["vllm==0.31.0", "torch==2.13.0", "-r", str(REPO / "configs" / "node-requirements.txt"), "deepspeed"]
    for name, constraints, what in (("shipped", CONSTRAINTS, [f"{REPO}[gpu]"]), ("broken", broken, [f"{REPO}[gpu]"]),
                                     ("node", NODE_CONSTRAINTS, node)):
        _dry_run(folder / name, constraints, what)


def _dry_run(folder: Path, constraints: Path, what: list[str]) -> None:
    """pip's resolver in the background; its exit code lands in `folder/rc`, for whichever worker waits."""
    folder.mkdir()
    # This machine's pip config points at a local CPU torch wheel and caps torch: the GPU set ignores both.
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--use-feature=fast-deps",
           "--report", str(folder / "report.json"), "-c", str(constraints), *what]
    script = '"$@" > "$0/pip.log" 2>&1; echo $? > "$0/rc.tmp"; mv "$0/rc.tmp" "$0/rc"'
    subprocess.Popen(["sh", "-c", script, str(folder), *pip], env=env)


@pytest.fixture(scope="module")
def dry_runs(request):
    folder = dry_run_folder(request.config)
    if not folder.exists():  # not started at collection (tests/conftest.py)
        start_dry_runs(folder)
    deadline = time.monotonic() + 900
    done = {}
    for name in ("shipped", "broken", "node"):
        while not (folder / name / "rc").exists():
            assert time.monotonic() < deadline, f"pip's dry run {name} did not finish in 900 s"
            time.sleep(1)
        done[name] = (int((folder / name / "rc").read_text()), folder / name)
    return done


def versions(dry_runs, name: str) -> dict[str, str]:
    code, folder = dry_runs[name]
    assert code == 0, (folder / "pip.log").read_text()[-3000:]
    return {item["metadata"]["name"].lower(): item["metadata"]["version"]
            for item in json.loads((folder / "report.json").read_text())["install"]}


def test_the_gpu_set_resolves(dry_runs):
    resolved = versions(dry_runs, "shipped")
    assert resolved["vllm"] == "0.22.1" and resolved["torch"] == "2.11.0"
    assert resolved["transformers"] == "5.24.0" and resolved["trl"] == "1.16.0"
    assert resolved["prefect"].startswith("3.9") and resolved["mlflow"] == "3.17.2"


def test_the_gpu_node_runtime_set_resolves_with_the_newest_vllm_trl_supports(dry_runs):
    node = versions(dry_runs, "node")
    assert node["vllm"] == "0.31.0" and node["trl"] == "1.16.0" and node["torch"] == "2.13.0"
    assert node["transformers"].startswith("5.17") and int(node["fastapi"].split(".")[1]) < 137
    assert "prefect" not in node  # the orchestrator stays in the grid's environment


def test_a_broken_pin_fails_the_check(dry_runs):
    code, folder = dry_runs["broken"]
    assert code != 0 and "ResolutionImpossible" in (folder / "pip.log").read_text()
