"""The `ablation-grid` flow: validate, plan, submit every node as its inputs complete, report.

A failing node stops only the arms that need it: the rest finish, the report shows what
completed, and the flow ends Failed naming the nodes that failed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from sparse2dense import dag
from sparse2dense.config import config_names, load_grid, load_profile
from sparse2dense.dag import artifacts_root
from sparse2dense.tracking import Tracker, tracking_uri
from tasks import node_tasks, report_task


class GridFailed(RuntimeError):
    pass


def _overrides(labeled_budget: int | None) -> dict:
    return {"data.labeled_budget": labeled_budget} if labeled_budget else {}


def _refreshing(plan: dag.Plan, refresh: list[str]) -> set[str]:
    """Node keys to recompute: `refresh` names kinds, keys (or key prefixes) or grid node names."""
    return {k for k, n in plan.nodes.items()
            if any(r in (n.kind, n.name) or (len(r) >= 6 and k.startswith(r)) for r in refresh)}


# Choices the Prefect UI renders as selects; the CLI may also pass YAML paths (validated by
# load_profile / load_grid, hence validate_parameters=False).
ProfileName = Literal[tuple(config_names("profiles"))]
GridName = Literal[tuple(config_names("grids"))]
ArmName = Literal[tuple(load_grid("allocation").arms)]


@flow(name="ablation-grid", task_runner=ThreadPoolTaskRunner(max_workers=1), log_prints=True,
      validate_parameters=False)
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
    prof, spec = load_profile(profile, overrides), load_grid(grid)  # fail before any compute
    plan = dag.plan(prof, spec, arms or None, seeds)
    root = artifacts_root(artifacts)
    tracker = Tracker(f"s2d-{prof.name}")
    tags = {"prefect.flow_run_id": str(flow_run.id), "s2d.profile": prof.name, "s2d.grid": spec.name}
    grid_run = tracker.start_grid_run(f"grid {spec.name} {flow_run.name or ''}".strip(),
                                      {"profile": profile, "grid": grid, "arms": arms or "all", "seeds": seeds,
                                       "overrides": overrides, "artifacts": str(root)}, tags)
    shared = {"profile": profile, "overrides": overrides, "artifacts": str(root),
              "experiment": f"s2d-{prof.name}", "tags": {**tags, "s2d.grid_run_id": grid_run}}

    fresh = _refreshing(plan, refresh)
    for key in fresh:
        shutil.rmtree(dag.node_dir(root, plan.nodes[key]), ignore_errors=True)
    tasks, futures = node_tasks(root), {}
    for key, node in plan.nodes.items():
        # The node folders are the source of truth: a Prefect cache record whose folder is gone
        # (deleted by hand, say) must not stand in for it.
        recompute = key in fresh or dag.read_manifest(root, node) is None
        submit = tasks[node.kind].with_options(refresh_cache=recompute).submit
        futures[key] = submit(node, {role: futures[parent.key] for role, parent in node.inputs}, shared)

    failed = {}
    for key, future in futures.items():
        future.wait()
        if not future.state.is_completed():
            failed[key] = f"{plan.nodes[key].kind} {plan.nodes[key].name}: {future.state.message}"
    logger.info("%d nodes, %d failed", len(futures), len(failed))

    summary = report_task(plan, root)
    _publish(tracker, grid_run, plan, root, summary, failed)
    print("\n" + summary["markdown"])
    if failed:
        tracker.client.set_terminated(grid_run, status="FAILED")
        raise GridFailed("failed nodes:\n  " + "\n  ".join(failed.values()))
    tracker.client.set_terminated(grid_run, status="FINISHED")
    return {"grid_run_id": grid_run, "report": summary["files"], "nodes": len(futures)}


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
