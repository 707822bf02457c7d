"""Grid figures: full-grid wall time, orchestration overhead, rerun time, node sharing.

    .venv/bin/python benchmarks/grid_figures.py [--profile toy] [--out /tmp/grid-figures]

Runs the grid from an empty artifact root (own MLflow store and Prefect home), then again.
Overhead = (grid wall time - sum of node compute times) / grid wall time. Prints JSON.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def run_grid(profile: str, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sparse2dense.cli", "grid", "--profile", profile], env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="toy")
    parser.add_argument("--out", default="/tmp/grid-figures")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=False)
    env = {**os.environ, "S2D_ARTIFACTS": str(out / "artifacts"), "PREFECT_HOME": str(out / "prefect"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{out}/mlflow.db"}

    first = run_grid(args.profile, env)
    manifests = [json.loads(p.read_text()) for p in (out / "artifacts").glob("*/*/manifest.json")]
    compute = sum(m["compute_s"] for m in manifests)
    before = {p: p.stat().st_mtime for p in (out / "artifacts").glob("*/*/manifest.json")}
    rerun = run_grid(args.profile, env)
    recomputed = sum(p.stat().st_mtime != t for p, t in before.items())

    from sparse2dense import dag
    from sparse2dense.config import load_grid, load_profile

    plan = dag.plan(load_profile(args.profile), load_grid("allocation"))
    chains = sum(len(dag.lineage(row.evaluation)) for row in plan.rows)
    print(json.dumps({
        "grid_wall_s": round(first, 1), "node_compute_s": round(compute, 1),
        "orchestration_overhead": round((first - compute) / first, 4),
        "rerun_wall_s": round(rerun, 1), "rerun_nodes_recomputed": recomputed,
        "node_executions": len(manifests), "executions_as_separate_chains": chains,
    }, indent=2))


if __name__ == "__main__":
    main()
