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
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "configs" / "gpu-constraints.txt"
NODE_CONSTRAINTS = REPO / "configs" / "gpu-node-constraints.txt"
pytestmark = pytest.mark.slow


def start_dry_runs() -> dict[str, tuple[subprocess.Popen, Path]]:
    """The shipped sets, and one with a pin that cannot resolve (vLLM 0.31 with transformers 5.24)."""
    folder = Path(tempfile.mkdtemp(prefix="gpu-set-"))
    broken = folder / "broken.txt"
    pins = [line for line in CONSTRAINTS.read_text().splitlines() if not line.startswith(("vllm==", "transformers=="))]
    broken.write_text("\n".join([*pins, "vllm==0.31.0", "transformers==5.24.0"]) + "\n")
    node = ["vllm==0.31.0", "torch==2.13.0", "-r", str(REPO / "configs" / "node-requirements.txt"), "deepspeed"]
    return {"shipped": _dry_run(folder / "shipped", CONSTRAINTS, [f"{REPO}[gpu]"]),
            "broken": _dry_run(folder / "broken", broken, [f"{REPO}[gpu]"]),
            "node": _dry_run(folder / "node", NODE_CONSTRAINTS, node)}


def _dry_run(folder: Path, constraints: Path, what: list[str]) -> tuple[subprocess.Popen, Path]:
    folder.mkdir()
    # This machine's pip config points at a local CPU torch wheel and caps torch: the GPU set ignores both.
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--use-feature=fast-deps",
               "--report", str(folder / "report.json"), "-c", str(constraints), *what]
    log = (folder / "pip.log").open("w")
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), folder


@pytest.fixture(scope="module")
def dry_runs(request):
    runs = getattr(request.config, "gpu_dry_runs", None) or start_dry_runs()
    for proc, _ in runs.values():
        proc.wait(timeout=900)
    return {name: (proc.returncode, folder) for name, (proc, folder) in runs.items()}


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
