"""UI figures: `make ui` until both servers are healthy, and a UI-triggered smoke grid until it finishes.

    .venv/bin/python benchmarks/ui_figures.py [--out DIR]

Starts the servers on free loopback ports in a fresh run folder, serves ablation-grid/local,
creates a flow run as the UI's Run button does, waits for it, stops everything. Prints one JSON object.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sparse2dense import servers
from sparse2dense.servers import free_port, http_json


def wait_for(fn, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = fn()
            if result:
                return result
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None, help="a new folder for the servers (default: a temporary one)")
    out = parser.parse_args().out
    run_dir = Path(out) if out else Path(tempfile.mkdtemp(prefix="ui-figures-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    prefect, mlflow = servers.start(run_dir, prefect_port=free_port(), mlflow_port=free_port())
    healthy_s = time.perf_counter() - start
    env = {**os.environ, "PREFECT_API_URL": f"{prefect.url}/api", "MLFLOW_TRACKING_URI": mlflow.url,
           "S2D_ARTIFACTS": str(run_dir / "artifacts")}
    repo = Path(__file__).resolve().parent.parent
    serve = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=repo, env=env,
                             stdout=open(run_dir / "serve.log", "wb"), stderr=subprocess.STDOUT)
    try:
        deployment = wait_for(lambda: http_json(f"{prefect.url}/api/deployments/name/ablation-grid/local"), 120)
        start = time.perf_counter()
        run = http_json(f"{prefect.url}/api/deployments/{deployment['id']}/create_flow_run",
                   {"parameters": {"profile": "smoke"}})
        final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
        state = wait_for(lambda: (s := http_json(f"{prefect.url}/api/flow_runs/{run['id']}")["state"]["type"]) in final
                         and s, 900)
        print(json.dumps({"figure": "Prefect UI", "make_ui_to_healthy_s": round(healthy_s, 1),
                          "ui_trigger_to_finished_smoke_grid_s": round(time.perf_counter() - start, 1),
                          "final_state": state}), flush=True)
    finally:
        serve.terminate()
        serve.wait(30)
        servers.stop(run_dir)


if __name__ == "__main__":
    main()
