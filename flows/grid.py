"""The `ablation-grid` flow: validate, plan, submit every node as its inputs complete, report.

The profile is read once, here; every node gets it with its params, so editing the YAML while a
grid runs changes nothing under way. Nodes whose folders hold a complete, intact manifest are not
submitted at all; a node with a changed or missing file is recomputed with everything downstream
of it. A failing node stops only the arms that need it: the rest finish, the report shows what
completed, and the flow ends Failed naming the nodes that failed.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from sparse2dense.config import ConfigError, config_names, load_grid, load_profile
from sparse2dense.execution import stopping
from sparse2dense.execution.launch import Tracking
from sparse2dense.execution.node_runner import sync_untracked
from sparse2dense.locations import artifacts_root, tracking_uri
from sparse2dense.planning import dag, preflight
from sparse2dense.tracking import Tracker
from tasks import GridRun, node_tasks, report_task

from .runners import local_runner, node_resources

log = logging.getLogger("sparse2dense")


def _stop_temporary_servers() -> None:
    """Prefect's temporary API server (a grid run without PREFECT_API_URL) would outlive a stopped `s2d grid`."""
    from prefect.server.api.server import SubprocessASGIServer

    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()


stopping.before_exit(_stop_temporary_servers)


class GridFailed(RuntimeError):
    pass


def _overrides(labeled_budget: int | None) -> dict:
    return {"data.labeled_budget": labeled_budget} if labeled_budget else {}


def to_recompute(plan: dag.Plan, root: Path, refresh: list[str]) -> tuple[set[str], set[str]]:
    """(keys to compute, keys whose folders to clear first).

    To compute: unfinished or damaged nodes, those `refresh` names (a kind, a key prefix or a grid node name),
    and everything downstream of a node that will change. Cleared: all of those but unfinished nodes, whose
    checkpoints the next attempt resumes from.
    """
    named = {k for k, n in plan.nodes.items()
             if any(r in (n.kind, n.name) or (len(r) >= 6 and k.startswith(r)) for r in refresh)}
    todo: set[str] = set()
    clear: set[str] = set()
    for key, node in plan.nodes.items():  # inputs come before the nodes that use them
        inputs = [parent.key for _, parent in node.inputs]
        pending, changing = any(k in todo for k in inputs), any(k in clear for k in inputs)
        if key in named or pending or dag.verified_manifest(root, node) is None:
            todo.add(key)
            if key in named or changing or dag.read_manifest(root, node) is not None:
                clear.add(key)  # asked for again, computed from other inputs, or damaged: start over
    return todo, clear


# Choices the Prefect UI renders as selects; the CLI may also pass YAML paths (validated by
# load_profile / load_grid, hence validate_parameters=False).
ProfileName = Literal[tuple(config_names("profiles"))]
GridName = Literal[tuple(config_names("grids"))]
ArmName = Literal[tuple(load_grid("allocation").arms)]


@flow(name="ablation-grid", task_runner=local_runner(), log_prints=False, validate_parameters=False)
def ablation_grid(profile: ProfileName = "toy", grid: GridName = "allocation", arms: list[ArmName] = [],
                  seeds: list[int] = [0], labeled_budget: int | None = None, refresh: list[str] = [],
                  artifacts: str | None = None) -> dict:
    """Run the arms of `grid` on `profile` for each seed; nodes already computed are reused.

    Args:
        profile: experiment profile (models, data, every stage's settings)
        grid: which arms exist and how they chain stages
        arms: arms to run (all when empty)
        seeds: one run of every arm per seed
        labeled_budget: override the profile's labeled budget L
        refresh: recompute these nodes: a kind (opd), a key prefix or a grid node name (bridge)
        artifacts: artifact root (default $S2D_ARTIFACTS or ./artifacts)
    """
    logger = get_run_logger()
    overrides = _overrides(labeled_budget)
    prof, spec = load_profile(profile, overrides), load_grid(grid)  # the one read of the profile
    plan = dag.plan(prof, spec, arms or None, seeds)
    root = artifacts_root(artifacts)
    problems = preflight.problems(plan, root)  # `s2d grid` checked already; a run from the UI checks here
    if problems:
        raise ConfigError("\n".join(problems))
    tracker = Tracker(f"s2d-{prof.name}")
    tags = {"prefect.flow_run_id": str(flow_run.id), "s2d.profile": prof.name, "s2d.grid": spec.name}
    grid_run = tracker.start_grid_run(f"grid {spec.name} {flow_run.name or ''}".strip(),
                                      {"profile": profile, "grid": grid, "arms": arms or "all", "seeds": seeds,
                                       "overrides": overrides, "artifacts": str(root)}, tags)
    run = GridRun(prof, root, Tracking(f"s2d-{prof.name}", {**tags, "s2d.grid_run_id": grid_run}))

    todo, clear = to_recompute(plan, root, refresh)
    for key in clear:
        shutil.rmtree(dag.node_dir(root, plan.nodes[key]), ignore_errors=True)
    logger.info("%d nodes: %d to compute, %d done", len(plan.nodes), len(todo), len(plan.nodes) - len(todo))
    sync_untracked(plan, root, Tracker(run.tracking.experiment), run.tracking.tags, skip=todo)
    tasks, results = node_tasks(root), {}
    for key, node in plan.nodes.items():
        if key not in todo:
            results[key] = dag.read_manifest(root, node)
            continue
        # refresh_cache: the node folders are the source of truth, not a Prefect record of a deleted folder.
        submit = tasks[node.kind].with_options(refresh_cache=True).submit
        inputs = {role: results[parent.key] for role, parent in node.inputs}
        with node_resources(prof.resources.of_node(node)):
            results[key] = submit(node, inputs, run, dag.node_tags(plan, key))

    try:
        failed = _wait(plan, results, todo)
    except BaseException as stopped:  # SIGTERM (as Prefect raises it), Ctrl-C, a cancel from the UI
        stopping.stopped_by(stopped)
        raise
    logger.info("%d nodes computed, %d failed", len(todo) - len(failed), len(failed))

    summary = report_task(plan, root)
    tracker.safely("publishing the comparison", _publish, tracker, grid_run, plan, root, summary, failed)
    tracker.end_grid_run(grid_run, ok=not failed)
    if failed:
        raise GridFailed("failed nodes:\n  " + "\n  ".join(failed.values()))
    return {"grid_run_id": grid_run, "report": summary["files"], "markdown": summary["markdown"],
            "nodes": len(plan.nodes), "computed": len(todo)}


def _wait(plan: dag.Plan, results: dict, todo: set[str]) -> dict[str, str]:
    """Wait for the submitted nodes; the failed ones, described. A node whose input failed ends not final
    (Prefect's NotReady), so the wait counts finished tasks, not final states. It returns to Python every
    second: a signal the kernel hands to a worker thread is only acted on when the main thread runs Python."""
    futures = {key: results[key] for key in todo}
    finished = threading.Semaphore(0)
    for future in futures.values():
        future.add_done_callback(lambda _: finished.release())
    for _ in futures:
        while not finished.acquire(timeout=1):
            pass
    failed = {}
    for key, future in futures.items():
        future.wait()  # finished already: keeps the state the task returned
        if not future.state.is_completed():
            failed[key] = f"{plan.nodes[key].kind} {plan.nodes[key].name}: {future.state.message}"
    return failed


def _publish(tracker: Tracker, grid_run: str, plan: dag.Plan, root: Path, summary: dict, failed: dict) -> None:
    """The comparison on the grid's MLflow run and as Prefect artifacts, linked both ways."""
    node_runs = {}
    for key, node in plan.nodes.items():
        manifest = dag.read_manifest(root, node)
        if manifest:
            node_runs[f"{node.kind}:{node.name}:{key}"] = manifest["mlflow_run_id"]
    tracker.log_files(grid_run, [Path(p) for p in summary["files"].values()], "comparison")
    tracker.client.log_dict(grid_run, node_runs, "node_runs.json")
    tracker.client.log_dict(grid_run, {"failed": failed}, "failed_nodes.json")
    tracker.set_tags(grid_run, {"s2d.failed_nodes": len(failed), "s2d.artifacts": str(root)})
    rows = [{k: v for k, v in r.items() if not k.endswith("_key")} for r in summary["rows"]]
    create_table_artifact(rows, key="comparison-table", description="per arm and seed")
    create_markdown_artifact(summary["markdown"], key="comparison", description="mean ± s.e. over seeds")
    uri = tracking_uri()
    if uri.startswith("http"):
        create_link_artifact(f"{uri.rstrip('/')}/#/experiments/{tracker.experiment_id}/runs/{grid_run}",
                             link_text="MLflow grid run", key="mlflow-grid-run")
