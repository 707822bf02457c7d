"""Where the grid's nodes run: one after another in this process (local), or side by side on Ray.

    ablation_grid                                   # local
    with_runner(ablation_grid, "ray", address)      # each node a Ray task with the GPUs its profile asks for

Ray's own retries stay off (`max_retries=0`): Prefect retries a node, and the retry resumes from
the node's checkpoint; a Ray-level retry could rerun a node Prefect already finished.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from sparse2dense.config import ResourceSpec

RUNNERS = ("local", "ray")


def local_runner() -> ThreadPoolTaskRunner:
    # One worker: two CPU trainings in one process fight over torch's threads; launched nodes could overlap,
    # but on one machine they would share its devices. Ray is the way to run nodes side by side.
    return ThreadPoolTaskRunner(max_workers=1)


def with_runner(flow, runner: str, address: str | None = None):
    """`flow` with the task runner `runner` names."""
    if runner == "local":
        return flow
    from prefect_ray import RayTaskRunner

    return flow.with_options(task_runner=RayTaskRunner(address=address))


def node_resources(resources: ResourceSpec):
    """Inside the flow: the Ray resources of the next submitted node (nothing on the local runner)."""
    context = FlowRunContext.get()
    if context is None or type(context.task_runner).__name__ != "RayTaskRunner":
        return nullcontext()
    return _ray_options(resources)


@contextmanager
def _ray_options(resources: ResourceSpec):
    from prefect_ray.context import remote_options

    with remote_options(num_gpus=resources.gpus, max_retries=0):
        yield
