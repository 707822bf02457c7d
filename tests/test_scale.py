"""Beyond one process and one machine, on CPU: training nodes on 2 processes (DDP over gloo), the grid on a
2-node local Ray cluster with logical GPUs, a gang of 2 machines placed across its nodes, and killing what was
launched."""

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from sparse2dense.config import NODE_KINDS, TRAINING_KINDS, load_grid, load_profile
from sparse2dense.execution import launch
from sparse2dense.planning import dag

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
# On Ray: two training nodes that can run side by side (the GRPOs) and a forward KL that fails once.
RAY_ARMS = ["teacher-grpo", "direct-grpo", "fkl-only"]


def s2d(*args, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "sparse2dense.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def manifests(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/*/manifest.json"))]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, prefect_api):
    """The smoke-ddp grid from an empty artifact root: bridge+replay, whose lineage holds every node kind."""
    root = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "S2D_ARTIFACTS": str(root / "artifacts"), "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
           "PREFECT_HOME": str(root / "prefect"), "PREFECT_API_URL": prefect_api}
    start = time.monotonic()
    done = s2d("grid", "--profile", "smoke-ddp", "--arms", "bridge+replay", env=env)
    print(f"smoke-ddp grid: {time.monotonic() - start:.0f}s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root, env


def test_smoke_ddp_trains_every_node_on_two_processes(ddp):
    root, env = ddp
    found = manifests(root / "artifacts")
    assert {m["kind"] for m in found} == set(NODE_KINDS)
    for m in found:
        assert m["world_size"] == (2 if m["kind"] in TRAINING_KINDS else 1), (m["kind"], m["name"])
        assert m["status"] == "completed" and m["tracked"]
    report = json.loads(s2d("report", "--profile", "smoke-ddp", "--arms", "bridge+replay", "--format", "json",
                            env=env).stdout)
    assert [(r["arm"], r["status"]) for r in report] == [("bridge+replay", "completed")]
    assert "toy-test/avg@2" in report[0]
    grpo = next(m for m in found if m["name"] == "teacher-grpo")
    assert grpo["labels_used"] == 16  # the union of what both processes' reward functions read


def test_timeout_kills_the_whole_process_group(tmp_path):
    script = ("import subprocess, time; p = subprocess.Popen(['sleep', '600']); print(p.pid, flush=True); "
              "time.sleep(600)")
    lines = []
    start = time.monotonic()
    codes, _ = launch._run_here([[sys.executable, "-c", script]], timeout_s=3, on_line=lines.append)
    # Both obey SIGTERM: no wait for the grace period (the ended leader, unreaped, once kept the group "alive")
    assert codes is None and time.monotonic() - start < 3 + launch.KILL_GRACE_S / 2
    grandchild = int(lines[0])
    time.sleep(0.5)
    assert not Path(f"/proc/{grandchild}").exists() or "Z" in Path(f"/proc/{grandchild}/stat").read_text().split()[2]


def test_launched_ranks_leave_mlflow_to_the_main_rank():
    """TRL's profiling imports MLflow wherever it is installed (about 1.5 s of every rank's start-up); in a launched
    node only the main rank needs it, to track, and imports it itself."""
    from sparse2dense.execution.node_runner import launched_env

    code = "import sys, sparse2dense.stages.grpo, sparse2dense.stages.distill; print('mlflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], env=launched_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.split()[-1] == "False", done.stderr[-2000:]


def test_a_launched_node_past_its_limit_fails_and_leaves_no_process(smoke, tmp_path):
    from sparse2dense.execution.node_runner import NodeTimeout

    profile = smoke.model_copy(update={"resources": smoke.resources.model_copy(update={
        "base": smoke.resources.default.model_copy(update={"launch": "process", "timeout_s": 8})})})
    plan = dag.plan(profile, load_grid("allocation"), ["teacher-base"])
    teacher = next(n for n in plan.nodes.values() if n.kind == "base" and n.name == "teacher")
    with pytest.raises(NodeTimeout, match="limit of 8s"):
        launch.run_launched(launch.LaunchSpec(profile, teacher.spec(), {}, tmp_path), profile.resources.of("base"),
                            on_line=print)
    spec = str(dag.node_dir(tmp_path, teacher) / "spec.json")
    assert not [p for p in Path("/proc").glob("[0-9]*") if spec in _cmdline(p)]
    assert dag.read_manifest(tmp_path, teacher) is None


def test_a_launched_node_runs_under_its_node_runtime(smoke, tmp_path):
    """`resources.*.python`: the node's processes start under that Python, not the grid's."""
    runtime = tmp_path / "node-env" / "python"
    runtime.parent.mkdir()
    runtime.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/runtime-calls\nexec {sys.executable} "$@"\n')
    runtime.chmod(0o755)
    base = smoke.resources.default.model_copy(update={"launch": "process", "python": str(runtime)})
    profile = smoke.model_copy(update={"resources": smoke.resources.model_copy(update={"base": base})})
    plan = dag.plan(profile, load_grid("allocation"), ["student-base"])  # the smallest node: 40 steps
    student = next(n for n in plan.nodes.values() if n.kind == "base" and n.name == "student")
    manifest = launch.run_launched(launch.LaunchSpec(profile, student.spec(), {}, tmp_path),
                                   profile.resources.of("base"), on_line=print)
    spec = dag.node_dir(tmp_path, student) / "spec.json"
    assert (tmp_path / "runtime-calls").read_text().split() == ["-m", "sparse2dense.execution.launched", str(spec)]
    assert manifest["status"] == "completed" and manifest["metrics"]["steps"] > 0


def test_a_killed_launcher_takes_its_node_down(smoke, tmp_path):
    """SIGKILL the process that launched a node: the node's watchdog ends its whole group."""
    plan = dag.plan(smoke, load_grid("allocation"), ["teacher-base"])
    teacher = next(n for n in plan.nodes.values() if n.kind == "base" and n.name == "teacher")
    code = ("import sys; from sparse2dense.planning import dag; from sparse2dense.execution import launch; "
            "from sparse2dense.config import load_profile, "
            "load_grid, ResourceSpec; p = load_profile('smoke'); "
            "n = next(n for n in dag.plan(p, load_grid('allocation'), ['teacher-base']).nodes.values() "
            "if n.kind == 'base' and n.name == 'teacher'); "
            f"launch.run_launched(launch.LaunchSpec(p, n.spec(), {{}}, __import__('pathlib').Path({str(tmp_path)!r})), "
            "ResourceSpec(launch='process'), on_line=print)")
    launcher = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    spec = str(dag.node_dir(tmp_path, teacher) / "spec.json")
    node = _wait_for(lambda: [p for p in Path("/proc").glob("[0-9]*") if spec in _cmdline(p)], 120)
    launcher.kill()
    launcher.wait()
    assert _wait_for(lambda: not [p for p in node if p.exists() and "Z" not in _state(p)], 30)


def test_the_grid_on_ray_spreads_nodes_over_logical_gpus(ray_grid):
    result, root, failed_once = ray_grid
    found = {m["name"]: m for m in manifests(root)}
    assert len(found) == result["nodes"] == result["computed"] == 9  # every node of the arms, once
    assert all(m["status"] == "completed" for m in found.values())
    training = [m for m in found.values() if m["kind"] in TRAINING_KINDS]
    assert {m["devices"] for m in training} <= {"0", "1"} and all(m["devices"] for m in training)
    # Independent nodes ran side by side, each on its own GPU.
    spans = [(m, _t(m["started_at"]), _t(m["finished_at"])) for m in training]
    overlapping = [(a, b) for a, sa, ea in spans for b, sb, eb in spans if a is not b and sa < eb and sb < ea]
    assert overlapping and all(a["devices"] != b["devices"] for a, b in overlapping)
    # The node that failed once was retried by Prefect inside the same Ray task (same worker process), not by Ray.
    retried = [m for m in found.values() if m["kind"] == "forward_kl" and m["resumed_from_step"]]
    assert len(retried) == 1 and retried[0]["pid"] == failed_once


def test_a_rerun_on_ray_computes_nothing(ray_grid, ray_flow):
    _, root, _ = ray_grid
    before = {p: p.stat().st_mtime for p in root.glob("*/*/manifest.json")}
    assert ray_flow()["computed"] == 0
    assert {p: p.stat().st_mtime for p in root.glob("*/*/manifest.json")} == before


def test_a_gang_of_two_machines_is_placed_across_the_ray_nodes(ray_grid, ray_stack, tmp_path):
    """forward_kl as 2 machines of 1 process: one `accelerate launch` on each Ray node (STRICT_SPREAD), one
    rendezvous, and both exit cleanly (no retry stands in: the launch is called once, directly)."""
    import ray

    _, root, _ = ray_grid
    run_dir, _ = ray_stack
    profile = load_profile(run_dir / "smoke-ray.yaml")
    gang = profile.resources.default.model_copy(update={"launch": "accelerate", "machines": 2, "processes": 1,
                                                        "gpus": 0})
    fkl = next(n for n in dag.plan(profile, load_grid("allocation"), ["fkl-only"]).nodes.values()
               if n.name == "fkl-only")
    inputs = {role: dag.read_manifest(root, node) for role, node in fkl.inputs}

    @ray.remote(num_cpus=0)
    def coordinate():
        lines = []
        spec = launch.LaunchSpec(profile, fkl.spec(), inputs, tmp_path)
        return launch.run_launched(spec, gang, on_line=lines.append), lines

    manifest, lines = ray.get(coordinate.remote())
    assert any(line.startswith("gang of 2 machines, rendezvous") for line in lines)
    assert (manifest["world_size"], manifest["local_world_size"], manifest["status"]) == (2, 1, "completed")


@pytest.fixture(scope="module")
def ray_stack(tmp_path_factory):
    """Prefect and MLflow servers (Ray workers log from their own processes) and a local Ray cluster of 2 nodes:
    a head with 2 logical GPUs and a CPU-only second node, for a gang's second machine. Its workers make the first
    forward-KL step to reach step 3 fail once (tests/ray_faults.py)."""
    import ray
    from ray.cluster_utils import Cluster

    from sparse2dense import servers
    from sparse2dense.servers import free_port

    run_dir = tmp_path_factory.mktemp("ray")
    prefect, mlflow = servers.start(run_dir, prefect_port=free_port(), mlflow_port=free_port())
    marker = run_dir / "failed-once"
    env = {"PREFECT_API_URL": f"{prefect.url}/api", "MLFLOW_TRACKING_URI": mlflow.url,
           "S2D_ARTIFACTS": str(run_dir / "artifacts"), "S2D_FAIL_ONCE_MARKER": str(marker),
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    patch = pytest.MonkeyPatch()
    for k, v in env.items():
        patch.setenv(k, v)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=1, num_gpus=0)
    ray.init(address=cluster.address,
             runtime_env={"worker_process_setup_hook": "ray_faults.fail_forward_kl_once", "env_vars": env})
    try:
        yield run_dir, marker
    finally:
        ray.shutdown()
        cluster.shutdown()
        patch.undo()
        servers.stop(run_dir)


@pytest.fixture(scope="module")
def ray_flow(ray_stack, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import ablation_grid, with_runner
    from flows.runners import ray_problems

    run_dir, _ = ray_stack
    profile = run_dir / "smoke-ray.yaml"
    profile.write_text(yaml.safe_dump({  # stage 0 of the teacher cut short: this test is about placement
        "extends": "smoke", "name": "smoke-ray", "models": {"teacher": {"pretrain": {"max_steps": 50}}},
        "resources": {"default": {"gpus": 1}, "rollouts": {"gpus": 0}, "evaluate": {"gpus": 0}}}))
    assert ray_problems(load_profile(profile), run_dir / "artifacts", None) == []

    def run():
        with temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
            return with_runner(ablation_grid, "ray")(profile=str(profile), arms=RAY_ARMS)

    return run


@pytest.fixture(scope="module")
def ray_grid(ray_stack, ray_flow):
    run_dir, marker = ray_stack
    start = time.monotonic()
    result = ray_flow()
    print(f"smoke grid on Ray: {time.monotonic() - start:.0f}s")
    return result, run_dir / "artifacts", int(marker.read_text())


def _t(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _state(proc: Path) -> str:
    try:
        return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def _wait_for(condition, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout}s")
