"""Where the grid's nodes run: one after another in this process (local), or side by side on Ray.

    ablation_grid                                   # local
    with_runner(ablation_grid, "ray", address)      # each node a Ray task with the GPUs its profile asks for

Ray's own retries stay off (`max_retries=0`): Prefect retries a node, and the retry resumes from
the node's checkpoint; a Ray-level retry could rerun a node Prefect already finished. A node
that spans machines is coordinated by a task without GPUs, which places one launch per machine
(`sparse2dense.execution.ray_gang`).
"""

from __future__ import annotations

import os
import socket
import uuid
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlparse

from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from sparse2dense.config import NODE_KINDS, Profile, ResourceSpec

RUNNERS = ("local", "ray")
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def local_runner() -> ThreadPoolTaskRunner:
    # One worker: two CPU trainings in one process fight over torch's threads; launched nodes could overlap,
    # but on one machine they would share its devices. Ray is the way to run nodes side by side.
    return ThreadPoolTaskRunner(max_workers=1)


def with_runner(flow, runner: str, address: str | None = None):
    """`flow` with the task runner `runner` names (Ray joins `address`, or the Ray already started here)."""
    if runner == "local":
        return flow
    from prefect_ray import RayTaskRunner

    return flow.with_options(task_runner=RayTaskRunner(address=address))


def node_resources(resources: ResourceSpec):
    """Inside the flow: the Ray resources of the next submitted node (nothing on the local runner)."""
    context = FlowRunContext.get()
    if context is None or type(context.task_runner).__name__ != "RayTaskRunner":
        return nullcontext()
    from prefect_ray.context import remote_options

    gpus = resources.gpus if resources.machines == 1 else 0  # a gang's machines take the GPUs, not its coordinator
    return remote_options(num_gpus=gpus, max_retries=0)


def ray_problems(profile: Profile, root: Path, address: str | None) -> list[str]:
    """What stops this profile from running on the Ray cluster at `address`, one line each (joins the cluster)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True, configure_logging=False)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    problems = _capacity_problems(profile, nodes)
    here = {socket.gethostbyname(socket.gethostname()), *LOOPBACK, ray.util.get_node_ip_address()}
    remote = [n["NodeManagerAddress"] for n in nodes if n["NodeManagerAddress"] not in here]
    uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    if not uri.startswith(("http://", "https://")) and (address or remote):
        # A Ray started here runs every worker on this machine, beside the local store; a cluster needs a server.
        problems.append(f"MLFLOW_TRACKING_URI is {uri}: Ray workers log from their own processes and hosts, which a "
                        "local store cannot serve; start a tracking server (`make ui`) and set "
                        "MLFLOW_TRACKING_URI=http://HOST:5000")
    elif remote and urlparse(uri).hostname in LOOPBACK:
        problems.append(f"MLFLOW_TRACKING_URI {uri} is on loopback, which the Ray nodes {remote} cannot reach")
    api = os.environ.get("PREFECT_API_URL")
    if remote and (not api or urlparse(api).hostname in LOOPBACK):
        problems.append(f"PREFECT_API_URL is {api or 'unset (a temporary local server)'}, which the Ray nodes "
                        f"{remote} cannot reach: run a Prefect server they can reach (`make ui`) and set it")
    problems += _unshared_root(root, nodes)
    return problems


def _capacity_problems(profile: Profile, nodes: list[dict]) -> list[str]:
    most = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
    problems = []
    for kind in NODE_KINDS:
        for settings in ((None, "student_grpo") if kind in ("grpo", "replay") else (None,)):
            r = profile.resources.of(kind, settings)
            where = f"resources.{settings or kind}"
            if r.gpus > most:
                problems.append(f"{where} asks for {r.gpus} GPUs per machine; the largest Ray node has {most:g}")
            if r.machines > len(nodes):
                problems.append(f"{where} spans {r.machines} machines; the Ray cluster has {len(nodes)} nodes")
    return sorted(set(problems))


def _unshared_root(root: Path, nodes: list[dict]) -> list[str]:
    """Every Ray node must see the artifact root: a probe file written here is looked for on each of them."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    root.mkdir(parents=True, exist_ok=True)
    probe = root / f".ray-probe-{uuid.uuid4().hex}"
    probe.write_text("s2d")

    @ray.remote(num_cpus=0, max_retries=0)
    def sees(path: str) -> bool:
        return Path(path).is_file()

    try:
        checks = {n["NodeManagerAddress"]: sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(probe)) for n in nodes}
        return [f"the artifact root {root} is not visible on Ray node {ip}: put it on a filesystem every node mounts"
                for ip, seen in zip(checks, ray.get(list(checks.values()))) if not seen]
    finally:
        probe.unlink(missing_ok=True)
