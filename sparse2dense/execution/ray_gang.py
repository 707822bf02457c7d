"""A node that spans several machines, on Ray: one `accelerate launch` per machine, placed together.

A placement group reserves one bundle per machine (STRICT_SPREAD: each on its own host, with the
node's GPUs), the first bundle's host is the rendezvous, and each bundle runs its machine's
launch as a Ray task with Ray's retries off. Cancelling those tasks kills their workers, whose
launched process groups then end through their launcher watchdog.
"""

from __future__ import annotations

import subprocess
import time
from collections import deque
from collections.abc import Callable

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ..config import ResourceSpec
from .node_runner import launched_env

PLACEMENT_TIMEOUT_S = 600


@ray.remote(num_cpus=0, max_retries=0)
def _rendezvous() -> tuple[str, int]:
    from ..servers import free_port

    return ray.util.get_node_ip_address(), free_port()


@ray.remote(max_retries=0)
def _machine(command: list[str]) -> tuple[int, list[str]]:
    """One machine of the gang: its launch, its lines printed (Ray forwards them to the driver)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=launched_env(),
                            start_new_session=True)
    tail: deque[str] = deque(maxlen=40)
    for line in proc.stdout:
        tail.append(line.rstrip("\n"))
        print(line, end="", flush=True)
    return proc.wait(), list(tail)


def run_gang(resources: ResourceSpec, command: Callable[[int, int, str], list[str]],
             on_line) -> tuple[list[int] | None, list[str]]:
    """(exit codes, or None after a timeout; the last lines of the machines that failed). `command(machine_rank,
    port, main_ip)` is one machine's launch: the rendezvous is only known once the gang is placed."""
    bundle = {"CPU": 1, **({"GPU": resources.gpus} if resources.gpus else {})}
    group = placement_group([bundle] * resources.machines, strategy="STRICT_SPREAD")
    try:
        ray.get(group.ready(), timeout=PLACEMENT_TIMEOUT_S)
        at = [PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i)
              for i in range(resources.machines)]
        main_ip, port = ray.get(_rendezvous.options(scheduling_strategy=at[0]).remote())
        on_line(f"gang of {resources.machines} machines, rendezvous {main_ip}:{port}")
        runs = [_machine.options(scheduling_strategy=at[i], num_gpus=resources.gpus).remote(
                    command(i, port, main_ip))
                for i in range(resources.machines)]
        return _wait(runs, resources.timeout_s)
    finally:
        remove_placement_group(group)


def _wait(runs: list, timeout_s: int | None) -> tuple[list[int] | None, list[str]]:
    """Until every machine ended, one failed (the others are cancelled: they would wait for it) or time ran out."""
    deadline = time.monotonic() + timeout_s if timeout_s else None
    pending, codes, tails = list(runs), [], []
    while pending:
        left = None if deadline is None else max(deadline - time.monotonic(), 0)
        done, pending = ray.wait(pending, num_returns=1, timeout=left)
        if not done:
            _cancel(pending)
            return None, tails
        code, tail = ray.get(done[0])
        codes.append(code)
        if code:
            _cancel(pending)
            return codes + [-9] * len(pending), tails + tail
    return codes, tails


def _cancel(runs: list) -> None:
    for run in runs:
        ray.cancel(run, force=True)
