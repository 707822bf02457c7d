"""One Prefect task per node kind. The node key is the cache key and the manifest the result.

Caching is SERIALIZABLE under a lease lock, so two grids started at once compute a shared node
once, and a lock whose holder died is broken instead of waited on forever. Retries rerun the node
in the same folder, where training resumes from its last checkpoint; a node that ran past its
time limit is not retried. The task stays thin: inline nodes run in this process, launched ones
in their own process group (see `sparse2dense.execution.launch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.transactions import IsolationLevel

from sparse2dense.config import NODE_KINDS, Profile
from sparse2dense.execution.launch import LaunchSpec, Tracking
from sparse2dense.execution.node_runner import NodeTimeout
from sparse2dense.planning import comparison
from sparse2dense.planning.dag import Node, read_manifest

from .leases import LeaseLockManager

RETRIES = 2


def _node_key(_context, parameters) -> str:
    return parameters["node"].key


@dataclass(frozen=True)
class GridRun:
    """What every node of one grid run shares: the profile (read once), the artifact root, where to track."""

    profile: Profile
    root: Path
    tracking: Tracking


def _run(node: Node, inputs: dict[str, dict], grid: GridRun, tags: dict[str, str]) -> dict:
    """`tags` are the node's own (the arms it serves, its seed), added to the grid run's."""
    done = read_manifest(grid.root, node)
    if done:
        return done  # computed meanwhile, e.g. by another grid on the same root
    tracking = grid.tracking.tagged(tags)
    resources = grid.profile.resources.of_node(node)
    if resources.launch == "inline":
        from sparse2dense.execution.node_runner import run_node
        from sparse2dense.tracking import Tracker

        return run_node(grid.profile, node.spec(), inputs, grid.root, Tracker(tracking.experiment), tracking.tags,
                        timeout_s=resources.timeout_s)
    from sparse2dense.execution.launch import run_launched

    spec = LaunchSpec(grid.profile, node.spec(), inputs, grid.root, tracking)
    return run_launched(spec, resources, on_line=get_run_logger().info)


def _retry_unless_timed_out(_task, _task_run, state) -> bool:
    try:
        state.result()
    except NodeTimeout:
        return False
    except Exception:
        return True
    return True


def _policy(root: Path) -> CacheKeyFnPolicy:
    return CacheKeyFnPolicy(cache_key_fn=_node_key).configure(
        key_storage=root / ".prefect" / "cache-keys",
        lock_manager=LeaseLockManager(lock_files_directory=root / ".prefect" / "locks"),
        isolation_level=IsolationLevel.SERIALIZABLE,
    )


def node_tasks(root: Path) -> dict:
    """The kind -> task table for one artifact root (results and cache keys live under it)."""
    storage = root / ".prefect" / "results"
    return {
        kind: task(_run, name=kind, retries=RETRIES, retry_delay_seconds=1, persist_result=True,
                   retry_condition_fn=_retry_unless_timed_out, result_storage=storage, cache_policy=_policy(root),
                   task_run_name=_run_name)
        for kind in NODE_KINDS
    }


def _run_name() -> str:
    from prefect.runtime import task_run

    node = task_run.parameters["node"]
    return f"{node.kind}:{node.name}[{node.key[:8]}]"


report_task = task(comparison.write_report, name="report", persist_result=False)
