"""A clean stop on SIGINT and SIGTERM: nothing computed is lost, nothing is left holding on.

Launched nodes' process groups are killed, MLflow runs this process left open are marked
KILLED, node locks it holds are released, Prefect's temporary server is stopped, and one line
says what happened and that the same command resumes. Training threads cannot be interrupted,
so the process then exits at once; every node's last checkpoint is on disk for the next run.
"""

from __future__ import annotations

import os
import signal
import sys


def install(program: str) -> None:
    """In the main thread of `s2d grid` (or a launched node): stop cleanly on SIGINT or SIGTERM."""

    def stop(signum, _frame) -> None:
        from . import launch, leases, tracking

        groups = launch.kill_all()
        runs = tracking.mark_open_runs_killed()
        locks = leases.release_held()
        _stop_prefect_server()
        print(f"\n{program}: stopped by {signal.Signals(signum).name}: {groups} launched node(s) killed, "
              f"{len(runs)} MLflow run(s) marked KILLED, {len(locks)} node lock(s) released; run the same command "
              "again to resume from the last checkpoints", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def _stop_prefect_server() -> None:
    try:
        from prefect.server.api.server import SubprocessASGIServer
    except ImportError:
        return
    for server in list(SubprocessASGIServer._instances.values()):
        try:
            server.stop()
        except Exception:
            pass
