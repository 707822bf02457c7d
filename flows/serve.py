"""`make serve`: the `ablation-grid/local` deployment, triggered from the Prefect UI, run on this machine.

    PREFECT_API_URL=http://127.0.0.1:4200/api MLFLOW_TRACKING_URI=http://127.0.0.1:5000 \\
        .venv/bin/python -m flows.serve [--runner ray [--address ADDR]]

Runs started from the UI execute in subprocesses of this process, log to the MLflow server
and link both ways (a link artifact on the flow run, the flow run id as an MLflow tag). With
`--runner ray` their nodes spread over the Ray cluster, as `s2d grid --runner ray` does.
"""

from __future__ import annotations

import argparse
import os
import sys

from flows.grid import ablation_grid
from flows.runners import RUNNERS, with_runner


def main() -> None:
    parser = argparse.ArgumentParser(prog="flows.serve")
    parser.add_argument("--runner", choices=RUNNERS, default="local")
    parser.add_argument("--address", default=None, help="Ray cluster address (ray runner)")
    args = parser.parse_args()
    if not os.environ.get("PREFECT_API_URL"):
        sys.exit("flows.serve: set PREFECT_API_URL (start the servers with `make ui`)")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "sparse2dense")
    with_runner(ablation_grid, args.runner, args.address).serve(
        name="local", tags=["sparse2dense", args.runner],
        description="The allocation grid on this machine: pick a profile, arms and seeds.")


if __name__ == "__main__":
    main()
