"""`s2d`: plan, run and report the allocation grid.

    s2d plan --profile toy                 # nodes, keys, cached / stale / pending, GPU-hours, memory
    s2d grid --profile toy --seeds 0,1     # run (Prefect, local mode unless PREFECT_API_URL is set)
    s2d grid --profile X --runner ray      # nodes side by side on a Ray cluster (--address ADDR)
    s2d report --profile toy --format md   # the comparison from what is on disk
    s2d sync --profile toy                 # log nodes finished while MLflow was away
    s2d ui [stop]                          # Prefect and MLflow servers on 127.0.0.1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .config import ConfigError, load_grid, load_profile
from .console import quiet_logs
from .execution import stopping
from .locations import artifacts_root
from .planning import comparison, cost, dag


def _csv(kind):
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="toy", help="a name in configs/profiles/ or a YAML path")
    p.add_argument("--grid", default="allocation", help="a name in configs/grids/ or a YAML path")
    p.add_argument("--arms", type=_csv(str), default=None, help="comma-separated arms (default: all)")
    p.add_argument("--seeds", type=_csv(int), default=[0], help="comma-separated seeds (default: 0)")
    p.add_argument("--labeled-budget", type=int, default=None, help="override data.labeled_budget")
    p.add_argument("--artifacts", default=None, help="artifact root (default: $S2D_ARTIFACTS or ./artifacts)")


def _plan(args) -> dag.Plan:
    overrides = {"data.labeled_budget": args.labeled_budget} if args.labeled_budget else {}
    return dag.plan(load_profile(args.profile, overrides), load_grid(args.grid), args.arms, args.seeds)


def _length(node: dict) -> str:
    """A training node's optimizer steps, and the epochs that set them: "360 steps (15 x 6 batches)"."""
    epochs = node["epochs"]
    steps = f"{node['steps']} steps" if node["steps"] else ""
    return f"{steps} ({epochs['epochs']} x {epochs['batches']} batches)" if epochs else steps


def cmd_plan(args) -> int:
    plan, root = _plan(args), artifacts_root(args.artifacts)
    costs = cost.estimate(plan, root)
    nodes = [{"key": k, "kind": n.kind, "name": n.name, "arms": plan.arms_of[k], "status": dag.status(root, n),
              "inputs": {role: p.key for role, p in n.inputs}, "steps": dag.planned_steps(n),
              "epochs": n.params.get("epochs")} | costs.nodes[k].fields() for k, n in plan.nodes.items()]
    if args.format == "json":
        print(json.dumps(nodes, indent=2))
        return 0
    for n in nodes:
        print(f"{n['status']:8} {n['kind']:10} {n['key']}  {n['name']:22} {_length(n):>27} "
              f"{costs.nodes[n['key']].columns()} arms: {','.join(n['arms'])}")
    counts = {s: sum(n["status"] == s for n in nodes) for s in ("cached", "stale", "pending")}
    print(f"{len(nodes)} nodes: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    print("\n".join(cost.describe(costs, plan, {n["key"]: n["status"] for n in nodes})))
    return 0


def cmd_sync(args) -> int:
    """Log to MLflow the finished nodes whose tracking server was away when they ended."""
    from .execution.node_runner import sync_untracked
    from .planning import preflight
    from .tracking import Tracker

    plan = _plan(args)
    problems = preflight.tracking_problems()
    if problems:
        print("\n".join(f"s2d sync: {p}" for p in problems), file=sys.stderr)
        return 2
    tracker = Tracker(f"s2d-{plan.profile.name}")
    synced = sync_untracked(plan, artifacts_root(args.artifacts), tracker, {"s2d.profile": plan.profile.name})
    print(f"{synced} node(s) logged to MLflow" + ("" if tracker.complete else "; some calls failed, run it again"))
    return 0 if tracker.complete else 1


def cmd_report(args) -> int:
    table = comparison.rows(_plan(args), artifacts_root(args.artifacts))
    if args.format == "json":
        print(json.dumps([{k: v for k, v in r.items() if not k.endswith("_key")} for r in table], indent=2))
    elif args.format == "csv":
        print(comparison.to_csv(table), end="")
    else:
        print(comparison.markdown(table), end="")
    return 0


def cmd_grid(args) -> int:
    from .planning import preflight

    plan = _plan(args)  # validate the whole configuration before Prefect starts anything
    root = artifacts_root(args.artifacts)
    if not args.refresh and dag.all_done(plan, root):  # neither Prefect nor torch for a grid with nothing to do
        print(f"s2d grid: {len(plan.nodes)} nodes: 0 to compute, {len(plan.nodes)} done; nothing to run, so Prefect "
              "is not started. The comparison, from disk:", file=sys.stderr)
        print(comparison.markdown(comparison.rows(plan, root)))
        return 0
    # A gang on the local runner is refused first: no other check could make it run.
    problems = (preflight.local_gangs(plan) if args.runner == "local" else []) or \
        preflight.problems(plan, root)
    # A busy laptop can take longer than Prefect's default 20 s to start its temporary server.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if problems:
        print("\n".join(f"s2d grid: {p}" for p in problems), file=sys.stderr)
        return 2
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "sparse2dense")
    from flows import GridFailed, ablation_grid, with_runner

    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.runner == "ray":
        from flows.runners import ray_problems

        problems = ray_problems(plan.profile, root, args.address)
        if problems:
            print("\n".join(f"s2d grid: {p}" for p in problems), file=sys.stderr)
            return 2
    grid = with_runner(ablation_grid, args.runner, args.address)
    stopping.install("s2d grid")
    try:
        grid(profile=args.profile, grid=args.grid, arms=args.arms, seeds=args.seeds,
             labeled_budget=args.labeled_budget, refresh=args.refresh or [], artifacts=args.artifacts)
    except GridFailed as err:
        print(comparison.markdown(comparison.rows(plan, root)))
        print(f"s2d grid: {err}", file=sys.stderr)
        return 1
    except BaseException as stopped:  # Prefect raises SIGTERM as a TerminationSignal inside the flow
        stopping.stopped_by(stopped)
        raise
    print(comparison.markdown(comparison.rows(plan, root)))
    return 0


def cmd_ui(args) -> int:
    from pathlib import Path

    from . import servers

    run_dir = Path(args.run_dir).resolve()
    if args.action == "stop":
        stopped = servers.stop(run_dir)
        print("stopped " + ", ".join(stopped) if stopped else "no servers were running")
        return 0
    try:
        started = servers.start(run_dir)
    except RuntimeError as err:
        print(f"s2d ui: {err}", file=sys.stderr)
        return 1
    prefect, mlflow = started
    print(f"Prefect UI: {prefect.url}\nMLflow UI:  {mlflow.url}\nlogs and pids: {run_dir}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s2d", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of a refused input")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="list the grid's nodes, whether each is computed, and their GPU-hours and memory")
    _common(p)
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(run=cmd_plan)
    p = sub.add_parser("grid", help="run the grid (only nodes not yet computed)")
    _common(p)
    p.add_argument("--refresh", action="append", metavar="KIND|KEY|NAME",
                   help="recompute these nodes (a kind, a key or key prefix, or a grid node name) and what "
                        "depends on them; repeatable")
    p.add_argument("--runner", choices=["local", "ray"], default="local",
                   help="local: nodes in this process or launched from it; ray: nodes side by side on Ray")
    p.add_argument("--address", default=None, help="Ray cluster address (ray runner; default: start a local Ray)")
    p.set_defaults(run=cmd_grid)
    p = sub.add_parser("sync", help="log to MLflow the nodes that finished while the tracking server was away")
    _common(p)
    p.set_defaults(run=cmd_sync)
    p = sub.add_parser("report", help="print the comparison of what is computed")
    _common(p)
    p.add_argument("--format", choices=["md", "csv", "json"], default="md")
    p.set_defaults(run=cmd_report)
    p = sub.add_parser("ui", help="start (or stop) the Prefect and MLflow servers on 127.0.0.1")
    p.add_argument("action", nargs="?", choices=["start", "stop"], default="start")
    p.add_argument("--run-dir", default=".run", help="pid and log files (default: .run)")
    p.set_defaults(run=cmd_ui)
    args = parser.parse_args(argv)
    quiet_logs()
    try:
        return args.run(args)
    except (ConfigError, ValueError) as err:
        if args.debug:
            raise
        print(f"s2d: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
