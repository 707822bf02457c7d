"""A clean stop on SIGINT and SIGTERM: nothing computed is lost, nothing is left holding on.

Launched nodes' process groups are killed, MLflow runs this process left open are marked
KILLED, node locks it holds are released, Prefect's temporary server is stopped, and one line
says what happened and that the same command resumes. Training threads cannot be interrupted,
so the process then exits at once; every node's last checkpoint is on disk for the next run.

During a flow, Prefect turns SIGTERM into a TerminationSignal raised in the flow: the grid flow
cleans up there (which also covers a run cancelled from the Prefect UI) and `s2d grid` ends as here.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

_DONE = {"groups": 0, "runs": 0, "locks": 0}
_PROGRAM: list[str] = []  # set by `install`: this process exits on a stop signal
# What the Prefect layer holds (node locks, its temporary server) is registered from there, so a launched node's
# runtime, which has no Prefect, stops the same way.
_RELEASES: dict[str, Callable[[], int]] = {}
_BEFORE_EXIT: list[Callable[[], None]] = []


def releases(what: str, release: Callable[[], int]) -> None:
    """Also release `what` on a stop: `release()` frees what this process holds and returns how many."""
    _RELEASES[what] = release


def before_exit(action: Callable[[], None]) -> None:
    """Also run `action` when a stop signal ends this process (after the clean-up)."""
    _BEFORE_EXIT.append(action)


def clean_up() -> dict[str, int]:
    """Kill launched groups, mark open MLflow runs KILLED, release the rest; returns the totals so far."""
    from .. import tracking
    from . import launch

    _DONE["groups"] += launch.kill_all()
    _DONE["runs"] += len(tracking.mark_open_runs_killed())
    for what, release in _RELEASES.items():
        _DONE[what] = _DONE.get(what, 0) + release()
    return dict(_DONE)


def stop(program: str, signum: int) -> None:
    """Clean up, run the before-exit actions (Prefect's temporary server), say so, exit with 128 + the signal."""
    done = clean_up()
    for action in _BEFORE_EXIT:
        try:
            action()
        except Exception:  # exiting anyway: one failed action must not keep the others from running
            pass
    print(f"\n{program}: stopped by {signal.Signals(signum).name}: {done['groups']} launched node(s) killed, "
          f"{done['runs']} MLflow run(s) marked KILLED, {done['locks']} node lock(s) released; run the same command "
          "again to resume from the last checkpoints", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def install(program: str) -> None:
    """In the main thread of `s2d grid` (or a launched node): stop cleanly on SIGINT or SIGTERM."""
    _PROGRAM[:] = [program]
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _frame: stop(program, signum))


def stopped_by(exc: BaseException) -> None:
    """In a flow, on any exception: when it is a stop signal, clean up, and in `s2d grid` exit now (the flow's
    task runner would otherwise wait for a training thread that cannot be interrupted)."""
    signum = signal_of(exc)
    if signum is None:
        return
    if _PROGRAM:
        stop(_PROGRAM[0], signum)
    clean_up()


def signal_of(stopped: BaseException) -> int | None:
    """The signal behind an exception that ends a flow early (Prefect's TerminationSignal, Ctrl-C)."""
    if isinstance(stopped, KeyboardInterrupt):
        return signal.SIGINT
    return getattr(stopped, "signal", None) if type(stopped).__name__ == "TerminationSignal" else None
