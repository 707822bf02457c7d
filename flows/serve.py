"""`make serve`: the `ablation-grid/local` deployment, triggered from the Prefect UI, run on this machine.

    PREFECT_API_URL=http://127.0.0.1:4200/api MLFLOW_TRACKING_URI=http://127.0.0.1:5000 \\
        .venv/bin/python -m flows.serve

Runs started from the UI execute in subprocesses of this process, log to the MLflow server
and link both ways (a link artifact on the flow run, the flow run id as an MLflow tag).
"""

from __future__ import annotations

import os
import sys

from flows.grid import ablation_grid


def main() -> None:
    if not os.environ.get("PREFECT_API_URL"):
        sys.exit("flows.serve: set PREFECT_API_URL (start the servers with `make ui`)")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "sparse2dense")
    ablation_grid.serve(name="local", tags=["sparse2dense"],
                        description="The allocation grid on this machine: pick a profile, arms and seeds.")


if __name__ == "__main__":
    main()
