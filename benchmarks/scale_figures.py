"""The smoke grid's wall time four ways: inline, launched, on 2 processes, on a local Ray. One JSON object per line.

    .venv/bin/python benchmarks/scale_figures.py [--only MODE] [--out DIR]

Each mode runs `s2d grid` from an empty root of its own (artifacts, MLflow store, Prefect home), every arm:
  inline    every node in the grid's process (the smoke profile as shipped)
  launched  every node in a process of its own (`launch: process`)
  ddp       the smoke-ddp profile: training nodes on 2 processes through `accelerate launch`
  ray       `--runner ray` on a local Ray started by the grid: independent nodes side by side (Ray workers
            log from their own processes, so this mode runs against Prefect and MLflow servers, started first)
grid_wall_s is the whole command; node_compute_s the sum of the nodes' own compute times (inside the
node's process when it is launched).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from sparse2dense import servers

MODES = ("inline", "launched", "ddp", "ray")


def profile_for(mode: str, root: Path) -> str:
    if mode == "ddp":
        return "smoke-ddp"
    if mode == "launched":
        path = root / "smoke-launched.yaml"
        path.write_text(yaml.safe_dump({"extends": "smoke", "name": "smoke-launched",
                                        "resources": {"default": {"launch": "process"}}}))
        return str(path)
    return "smoke"


def run(mode: str, root: Path) -> dict:
    root.mkdir(parents=True)
    env = {**os.environ, "S2D_ARTIFACTS": str(root / "artifacts"), "PREFECT_HOME": str(root / "prefect"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
    command = [sys.executable, "-m", "sparse2dense.cli", "grid", "--profile", profile_for(mode, root)]
    if mode == "ray":
        prefect, mlflow = servers.start(root / "servers", prefect_port=servers.free_port(),
                                        mlflow_port=servers.free_port())
        env |= {"PREFECT_API_URL": f"{prefect.url}/api", "MLFLOW_TRACKING_URI": mlflow.url}
        command += ["--runner", "ray"]
    try:
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start  # the grid command alone, not the servers around it
    finally:
        if mode == "ray":
            servers.stop(root / "servers")
    found = [json.loads(p.read_text()) for p in (root / "artifacts").glob("*/*/manifest.json")]
    return {"figure": "smoke grid", "mode": mode, "nodes": len(found), "grid_wall_s": round(wall, 1),
            "node_compute_s": round(sum(m["compute_s"] for m in found), 1),
            "max_world_size": max(m.get("world_size") or 1 for m in found)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=MODES, action="append")
    parser.add_argument("--out", default=None, help="a new folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="scale-figures-"))
    for mode in args.only or MODES:
        print(json.dumps(run(mode, out / mode)), flush=True)


if __name__ == "__main__":
    main()
