"""A launched node's entry point: `python -m sparse2dense.execution.launched <node folder>/spec.json`.

The same command runs under `accelerate launch` on any number of processes: every rank runs the
stage, the main process writes the manifest and the MLflow records. A watchdog ends the whole
process group if the launcher (the grid's process) disappears, so nothing trains on unowned.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from ..console import quiet_logs
from ..stages.common import is_main_process
from . import stopping
from .launch import LaunchSpec
from .node_runner import run_node

WATCH_EVERY_S = 2.0


def watch_launcher(pid: int) -> None:
    """End this process group once `pid` is gone (the launcher was killed, even by SIGKILL)."""

    def watch() -> None:
        while True:
            time.sleep(WATCH_EVERY_S)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="launcher-watchdog").start()


def main(spec_path: str) -> int:
    spec = LaunchSpec.read(Path(spec_path))
    watch_launcher(int(os.environ["S2D_LAUNCHER_PID"]))
    stopping.install("sparse2dense.execution.launched")
    quiet_logs(fmt="%(message)s")  # the launcher stamps each line it relays
    tracker = None
    if is_main_process() and spec.tracking.experiment:
        from ..tracking import Tracker

        tracker = Tracker(spec.tracking.experiment)
    run_node(spec.profile, spec.node, spec.inputs, spec.root, tracker, spec.tracking.tags, timeout_s=None)
    leave_process_group()
    return 0


def leave_process_group() -> None:
    """Every rank waits for the others, then leaves: a rank that exits first would take the rendezvous store
    (hosted by the first machine) from the ranks still shutting down, and they abort."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
