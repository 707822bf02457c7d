"""The grid through real Prefect (a temporary server) and a real MLflow store, on the smoke profile."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sparse2dense.config import load_grid, load_profile
from sparse2dense.planning import dag

pytestmark = pytest.mark.slow
ARMS = ["teacher-base", "direct-grpo", "fkl-only", "bridge", "bridge+replay"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Artifacts, MLflow store and Prefect server of this module's grids."""
    from prefect.testing.utilities import prefect_test_harness

    root = tmp_path_factory.mktemp("grid")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    patch.setenv("S2D_ARTIFACTS", str(root / "artifacts"))
    with prefect_test_harness(server_startup_timeout=120):
        yield root / "artifacts"
    patch.undo()


def run_grid(**kwargs):
    from flows import ablation_grid

    return ablation_grid(profile="smoke", **kwargs)


def node_runs(kind=None, grid_run=None) -> list:
    """Node runs of this module's store; of one grid run when `grid_run` is given (later tests add runs)."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name("s2d-smoke")
    query = "tags.`s2d.kind` != 'grid'" if kind is None else f"tags.`s2d.kind` = '{kind}'"
    if grid_run:
        query += f" and tags.`s2d.grid_run_id` = '{grid_run}'"
    return client.search_runs([experiment.experiment_id], query, max_results=1000)


def smoke_plan(arms=None, seeds=(0,)):
    return dag.plan(load_profile("smoke"), load_grid("allocation"), arms, list(seeds))


@pytest.fixture(scope="module")
def first(env):
    return run_grid()


def test_grid_computes_each_node_once_and_reports_every_arm(env, first):
    plan = smoke_plan()
    runs = node_runs()
    keys = [r.data.tags["s2d.key"] for r in runs]
    assert sorted(keys) == sorted(plan.nodes)  # one node run per key, shared nodes once
    chains = sum(len(dag.lineage(row.evaluation)) for row in plan.rows)
    assert len(plan.nodes) < chains
    table = json.loads(open(first["report"]["json"]).read())
    assert {r["arm"] for r in table} == set(load_grid("allocation").arms)
    assert all(r["status"] == "completed" and "toy-test/avg@2" in r for r in table)
    bridge_grpo = next(r for r in table if r["arm"] == "bridge+grpo")
    assert bridge_grpo["labels_on"] == "16 labeled on teacher, 16 heldout on student"


def test_manifests_hold_the_contract(env, first):
    for node in smoke_plan().nodes.values():
        manifest = json.loads((dag.node_dir(env, node) / "manifest.json").read_text())
        assert manifest["key"] == node.key and manifest["status"] == "completed"
        assert {"kind", "inputs", "params", "metrics", "mlflow_run_id", "code_fingerprint",
                "resumed_from_step", "packages", "files"} <= set(manifest)
        assert manifest["inputs"] == {role: parent.key for role, parent in node.inputs}


def test_grid_run_links_the_comparison_and_every_node_run(env, first):
    client = MlflowClient()
    grid_run = client.get_run(first["grid_run_id"])
    assert grid_run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(grid_run.info.run_id, "comparison")}
    assert {"comparison/comparison.md", "comparison/comparison.png", "comparison/comparison.json"} <= artifacts
    linked = json.loads(open(client.download_artifacts(grid_run.info.run_id, "node_runs.json")).read())
    assert set(linked.values()) == {r.info.run_id for r in node_runs()}
    evaluation = node_runs("evaluate")[0]
    assert "toy-test/avg_at_2" in evaluation.data.metrics
    tables = [a.path for a in client.list_artifacts(evaluation.info.run_id, "samples")]
    assert tables, "sample completions are logged as a table"


def test_a_finished_grid_computes_nothing_through_the_flow_or_s2d_grid(env, first):
    """The flow (as the Prefect UI runs it) finds every node cached; `s2d grid` reads the report from disk
    without starting Prefect, and it and `s2d plan` import no heavy library."""
    before = len(node_runs())
    run_grid()
    assert len(node_runs()) == before
    assert {dag.status(env, n) for n in smoke_plan().nodes.values()} == {"cached"}
    code = ("import sys; from sparse2dense import cli; code = cli.main(sys.argv[1:]); "
            "print('IMPORTED', [m for m in ('torch', 'transformers', 'trl', 'prefect') if m in sys.modules]); "
            "sys.exit(code)")
    grid, plan = (subprocess.run([sys.executable, "-c", code, command, "--profile", "smoke"], capture_output=True,
                                 text=True, timeout=120) for command in ("grid", "plan"))
    for done in (grid, plan):
        assert done.returncode == 0 and "IMPORTED []" in done.stdout, done.stdout[-1000:] + done.stderr[-2000:]
    nodes = len(smoke_plan().nodes)
    assert f"{nodes} nodes: 0 to compute, {nodes} done; nothing to run, so Prefect is not started" in grid.stderr
    assert all(f"| {arm} |" in grid.stdout for arm in load_grid("allocation").arms)
    assert len(node_runs()) == before


def test_adding_a_seed_computes_only_that_seed(env, first):
    before = {r.data.tags["s2d.key"] for r in node_runs()}
    run_grid(arms=ARMS, seeds=[0, 1])
    after = {r.data.tags["s2d.key"] for r in node_runs()}
    expected_new = set(smoke_plan(ARMS, (0, 1)).nodes) - set(smoke_plan().nodes)
    assert after - before == expected_new
    assert all(dag.node_dir(env, smoke_plan().nodes[k]).exists() for k in before)


def test_refresh_recomputes_the_named_nodes(env, first):
    plan = smoke_plan(["teacher-base"])
    evaluation = plan.rows[0].evaluation
    old = dag.read_manifest(env, evaluation)["mlflow_run_id"]
    run_grid(arms=["teacher-base"], refresh=["evaluate:teacher-base"])
    new = dag.read_manifest(env, evaluation)
    assert new["mlflow_run_id"] != old
    assert dag.read_manifest(env, plan.rows[0].model)["status"] == "completed"


def test_a_deleted_node_folder_is_recomputed_despite_prefects_cache(env, first):
    import shutil

    evaluation = smoke_plan(["student-base"]).rows[0].evaluation
    old = dag.read_manifest(env, evaluation)["mlflow_run_id"]
    shutil.rmtree(dag.node_dir(env, evaluation))
    run_grid(arms=["student-base"])
    assert dag.read_manifest(env, evaluation)["mlflow_run_id"] != old


def test_a_node_that_fails_once_is_retried_and_resumes(env, first, monkeypatch):
    from sparse2dense.stages.supervised import ForwardKLTrainer

    real_step, failed = ForwardKLTrainer.training_step, []

    def flaky_step(self, *args, **kwargs):
        if self.state.global_step == 2 and not failed:  # after the checkpoint at step 2
            failed.append(True)
            raise RuntimeError("transient failure")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(ForwardKLTrainer, "training_step", flaky_step)
    run_grid(arms=["fkl-only"], refresh=["fkl-only"])
    node = next(n for n in smoke_plan(["fkl-only"]).nodes.values() if n.name == "fkl-only")
    manifest = dag.read_manifest(env, node)
    assert failed and manifest["resumed_from_step"] == 2
    assert manifest["metrics"]["steps"] == 4


def test_refresh_recomputes_what_depends_on_the_named_node(env, first):
    plan = smoke_plan(["bridge"])
    fkl = next(n for n in plan.nodes.values() if n.name == "fkl-only")
    downstream = {n.key: dag.read_manifest(env, n)["mlflow_run_id"] for n in plan.nodes.values()
                  if n.name in ("bridge", "evaluate:bridge")}
    upstream = {n.key: dag.read_manifest(env, n)["mlflow_run_id"] for n in plan.nodes.values()
                if n.name in ("teacher-grpo", "rl-rollouts")}
    run_grid(arms=["bridge"], refresh=[fkl.key[:8]])
    for key, old in downstream.items():
        assert dag.read_manifest(env, plan.nodes[key])["mlflow_run_id"] != old
    for key, old in upstream.items():
        assert dag.read_manifest(env, plan.nodes[key])["mlflow_run_id"] == old


def test_a_failing_arm_does_not_stop_the_others(env, first, monkeypatch):
    from flows import GridFailed
    from sparse2dense.stages import distill

    def broken(*args, **kwargs):
        raise RuntimeError("OPD is broken")

    monkeypatch.setattr(distill, "opd", broken)
    with pytest.raises(GridFailed, match="opd-only"):
        run_grid(arms=["opd-only", "direct-grpo"], seeds=[2])
    plan = smoke_plan(["opd-only", "direct-grpo"], (2,))
    status = {row.arm: dag.status(env, row.evaluation) for row in plan.rows}
    assert status == {"opd-only": "pending", "direct-grpo": "cached"}


def test_two_grids_at_once_compute_a_shared_node_once(env, tmp_path):
    """Two `s2d grid` processes on one artifact root: the node lock makes the second wait, then reuse."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    shared = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "S2D_ARTIFACTS": str(tmp_path)}
    command = [sys.executable, "-m", "sparse2dense.cli", "grid", "--profile", "smoke", "--arms", "student-base"]
    procs = [subprocess.Popen(command, env=shared, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert {dag.status(tmp_path, n) for n in smoke_plan(["student-base"]).nodes.values()} == {"cached"}
    for line in ("running base student", "running evaluate evaluate:student-base"):
        assert sum(out.count(line) for out in outputs) == 1, outputs


def test_mlflow_ranks_the_arms_models_per_benchmark(env, first):
    """Evaluation metrics are logged against the evaluated model and the benchmark: MLflow's Models view ranks."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name("s2d-smoke")
    models = client.search_logged_models([experiment.experiment_id], order_by=[
        {"field_name": "metrics.toy-test/avg_at_2", "ascending": False, "dataset_name": "toy-test"}])
    runs = {r.info.run_id for r in node_runs(grid_run=first["grid_run_id"])}
    models = [m for m in models if m.source_run_id in runs]  # the first grid's models
    scored = [(m.tags["s2d.key"], next(x.value for x in m.metrics if x.key == "toy-test/avg_at_2"))
              for m in models if any(x.key == "toy-test/avg_at_2" for x in m.metrics or [])]
    table = json.loads(open(first["report"]["json"]).read())
    assert {key for key, _ in scored} == {r["model_key"] for r in table}
    assert [v for _, v in scored] == sorted((v for _, v in scored), reverse=True)
    by_model = {r["model_key"]: r["toy-test/avg@2"] for r in table}
    assert all(value == pytest.approx(by_model[key]) for key, value in scored)
    metric = next(x for m in models for x in m.metrics or [] if x.key == "toy-test/avg_at_2")
    assert metric.dataset_name == "toy-test" and metric.dataset_digest


def test_node_runs_link_the_models_they_consumed_and_carry_arm_and_seed(env, first):
    client = MlflowClient()
    bridge = next(r for r in node_runs("opd", first["grid_run_id"]) if r.data.tags["s2d.node"] == "bridge")
    inputs = client.get_run(bridge.info.run_id).inputs.model_inputs  # search results leave model inputs out
    consumed = {client.get_logged_model(i.model_id).tags["s2d.key"] for i in inputs}
    plan = smoke_plan(["bridge"])
    node = next(n for n in plan.nodes.values() if n.name == "bridge")
    assert consumed == {parent.key for _, parent in node.inputs}
    assert set(bridge.data.tags["s2d.arm"].split(",")) == {"bridge", "bridge+grpo", "bridge+replay"}
    assert bridge.data.tags["s2d.seed"] == "0"
    evaluation = next(r for r in node_runs("evaluate", first["grid_run_id"])
                      if r.data.tags["s2d.node"] == "evaluate:bridge")
    assert evaluation.data.tags["s2d.arm"] == "bridge"
    teacher = next(r for r in node_runs("base", first["grid_run_id"]) if r.data.tags["s2d.node"] == "teacher")
    assert teacher.data.tags["s2d.seed"] == "all" and "bridge" in teacher.data.tags["s2d.arm"].split(",")


def test_a_default_store_keeps_its_artifacts_next_to_its_database(env, first):
    client = MlflowClient()
    experiment = client.get_experiment_by_name("s2d-smoke")
    database = os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")
    assert experiment.artifact_location.startswith(Path(database).parent.joinpath("mlartifacts").as_uri())


def test_the_grid_again_from_scratch_writes_the_same_bytes_and_metrics(env, first, tmp_path, monkeypatch):
    """Every node of the smoke grid, computed again in an empty root: byte-identical weight files and the same
    metrics in its manifest (the thread count is pinned and in the key; every RNG is seeded from the params)."""
    import hashlib

    again = tmp_path / "artifacts"
    monkeypatch.setenv("S2D_ARTIFACTS", str(again))
    run_grid()
    compared = 0
    for node in smoke_plan().nodes.values():
        one, two = dag.node_dir(env, node), dag.node_dir(again, node)
        metrics = [json.loads((d / "manifest.json").read_text())["metrics"] for d in (one, two)]
        assert metrics[0] == metrics[1], node.name
        for weights in sorted(one.rglob("*.safetensors")):
            twin = two / weights.relative_to(one)
            assert hashlib.sha256(weights.read_bytes()).digest() == hashlib.sha256(twin.read_bytes()).digest(), \
                f"{node.kind} {node.name}: {weights.relative_to(one)}"
            compared += 1
    assert compared >= 10
