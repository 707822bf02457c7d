"""One Prefect task per node kind. The node key is the cache key and the manifest the result.

Caching is SERIALIZABLE under a file lock, so two grids started at once compute a shared
node once; retries rerun the node in the same folder, where training resumes from its last
checkpoint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import task
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.locking.filesystem import FileSystemLockManager
from prefect.transactions import IsolationLevel

from sparse2dense import report as comparison
from sparse2dense.config import load_profile
from sparse2dense.dag import Node, Plan, canonical, read_manifest
from sparse2dense.runner import run_node
from sparse2dense.tracking import Tracker

KINDS = ("base", "grpo", "replay", "rollouts", "forward_kl", "opd", "evaluate")
RETRIES = 2


def _node_key(_context, parameters) -> str:
    return parameters["node"].key


def _run(node: Node, inputs: dict[str, dict], run: dict) -> dict:
    """`run` carries what every node of a grid shares: profile, artifact root, tracking."""
    root = Path(run["artifacts"])
    done = read_manifest(root, node)
    if done:
        return done  # computed earlier, e.g. by a grid whose Prefect records are gone
    profile = load_profile(run["profile"], run["overrides"])
    tracker = Tracker(run["experiment"])
    return run_node(profile, node, inputs, root, tracker, tags=run["tags"])


def _policy(root: Path) -> CacheKeyFnPolicy:
    return CacheKeyFnPolicy(cache_key_fn=_node_key).configure(
        key_storage=root / ".prefect" / "cache-keys",
        lock_manager=FileSystemLockManager(lock_files_directory=root / ".prefect" / "locks"),
        isolation_level=IsolationLevel.SERIALIZABLE,
    )


def node_tasks(root: Path) -> dict:
    """The kind -> task table for one artifact root (results and cache keys live under it)."""
    storage = root / ".prefect" / "results"
    return {
        kind: task(_run, name=kind, retries=RETRIES, retry_delay_seconds=1, persist_result=True,
                   result_storage=storage, cache_policy=_policy(root),
                   task_run_name=_run_name)
        for kind in KINDS
    }


def _run_name() -> str:
    from prefect.runtime import task_run

    node = task_run.parameters["node"]
    return f"{node.kind}:{node.name}[{node.key[:8]}]"


def _write_report(plan: Plan, root: Path) -> dict:
    table = comparison.rows(plan, root)
    key = _report_key(table)
    files = comparison.write(table, root / "report" / key)
    return {"key": key, "rows": table, "files": {k: str(v) for k, v in files.items()},
            "markdown": comparison.markdown(table)}


def _report_key(table: list[dict]) -> str:
    rows = [(r["arm"], r["seed"], r["eval_key"], r["status"]) for r in table]
    return hashlib.sha256(canonical(rows).encode()).hexdigest()[:16]


report_task = task(_write_report, name="report", persist_result=False)
