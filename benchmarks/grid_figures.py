"""Grid figures: orchestration overhead, a cached rerun, node sharing. One JSON object per line.

    .venv/bin/python benchmarks/grid_figures.py [--profile toy] [--out DIR] [--reuse ROOT]

From an empty root (its own artifacts, MLflow store and Prefect home) it runs the grid and then runs it
again. overhead_ratio = (grid wall time - the nodes' compute time) / grid wall time, the whole command
included (interpreter start, Prefect's temporary server, MLflow, the report). `--reuse ROOT` takes a root
where the grid already finished (`ROOT/artifacts`, `ROOT/mlflow.db`): then only the rerun is measured.
cached_rerun_s: that rerun, the whole command (with nothing to do it prints the report from disk, without
Prefect); python_floor_s: `python -c pass`, timed in the same run, the least any command costs.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sparse2dense.config import load_grid, load_profile
from sparse2dense.planning import dag


def run_grid(profile: str, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sparse2dense.cli", "grid", "--profile", profile], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def emit(**figures) -> None:
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="toy")
    parser.add_argument("--out", default=None, help="a new folder for the run (default: a temporary one)")
    parser.add_argument("--reuse", default=None, help="a root where this grid already finished")
    args = parser.parse_args()
    root = Path(args.reuse or args.out or tempfile.mkdtemp(prefix="grid-figures-"))
    env = {**os.environ, "S2D_ARTIFACTS": str(root / "artifacts"), "PREFECT_HOME": str(root / "prefect"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
    artifacts = root / "artifacts"

    if not args.reuse:
        wall = run_grid(args.profile, env)
        compute = sum(json.loads(p.read_text())["compute_s"] for p in artifacts.glob("*/*/manifest.json"))
        emit(figure="toy grid from nothing", profile=args.profile, grid_wall_s=wall, node_compute_s=compute,
             overhead_ratio=(wall - compute) / wall)

    before = {p: p.stat().st_mtime_ns for p in artifacts.glob("*/*/manifest.json")}
    rerun = run_grid(args.profile, env)
    recomputed = sum(p.stat().st_mtime_ns != t for p, t in before.items())
    floor = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    emit(figure="rerun of the finished grid", profile=args.profile, cached_rerun_s=rerun, nodes_recomputed=recomputed,
         python_floor_s=time.perf_counter() - floor)

    plan = dag.plan(load_profile(args.profile), load_grid("allocation"))
    naive = sum(len(dag.lineage(row.evaluation)) for row in plan.rows)
    emit(figure="node sharing", profile=args.profile, node_executions=len(plan.nodes), naive_node_executions=naive)


if __name__ == "__main__":
    main()
