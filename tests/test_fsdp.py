"""The sharded path on a laptop: the hub-smoke grid with every training node under FSDP2 on 2 CPU processes
(and the OPD node under DeepSpeed ZeRO-3).

What the paper's GPU runs depend on, measured in each training node's manifest (`placement`, written by the
main rank from the models as they were laid out): the student and the distillation teachers hold a shard
of their parameters on each rank, compute runs in bf16 and gradients are reduced in fp32, as sharded fp32
tensors."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sparse2dense import hub_smoke

pytestmark = pytest.mark.slow
TRAINED = ("grpo", "replay", "forward_kl", "opd")  # the base nodes of a hub profile are only fetched
ARM = "bridge+replay"
GREEDY_STEPS = 8


@pytest.fixture(scope="module")
def fsdp_grid(tmp_path_factory, prefect_api):
    work = tmp_path_factory.mktemp("hub-smoke-fsdp")
    env = {**hub_smoke.offline_env(work), "PREFECT_API_URL": prefect_api}

    def run(*args, timeout=1200):
        done = subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
        return done.stdout

    run("-m", "sparse2dense.hub_smoke", timeout=300)
    # bridge+replay's lineage holds every trained kind (test_hub_smoke runs every arm, on one process)
    run("-m", "sparse2dense.cli", "grid", "--profile", "hub-smoke-fsdp", "--arms", ARM)
    report = json.loads(run("-m", "sparse2dense.cli", "report", "--profile", "hub-smoke-fsdp", "--arms", ARM,
                            "--format", "json"))
    found = [json.loads(p.read_text()) for p in sorted((work / "artifacts").glob("*/*/manifest.json"))]
    return report, found, work, env


def test_bridge_replay_finishes_offline_with_every_trained_kind_sharded_on_two_processes(fsdp_grid):
    report, found, *_ = fsdp_grid
    assert [(r["arm"], r["status"]) for r in report] == [(ARM, "completed")]
    trained = [m for m in found if m["kind"] in TRAINED]
    assert {m["kind"] for m in trained} == set(TRAINED)
    for m in trained:
        assert (m["world_size"], m["placement"]["strategy"]) == (2, "fsdp2"), m["name"]


def test_student_and_teachers_each_hold_a_shard_on_each_rank(fsdp_grid):
    _, found, *_ = fsdp_grid
    for m in found:
        if m["kind"] in TRAINED:
            placed = m["placement"]
            assert placed["student_local_fraction"] < 1, m["name"]
            assert placed["gradients_sharded"], m["name"]
            if m["kind"] in ("opd", "forward_kl"):  # before: a whole teacher on every rank, on the CPU
                assert placed["teacher_local_fraction"] < 1, m["name"]


def test_only_the_first_rank_reads_the_checkpoints(fsdp_grid):
    """The other ranks build the models' shapes and receive their shards (before: every rank read every model
    whole, 2.3 TB of fp32 per machine for the 70B)."""
    _, found, *_ = fsdp_grid
    for m in found:
        if m["kind"] in TRAINED:
            models = 2 if m["kind"] in ("opd", "forward_kl") else 1  # student and teacher, or the policy
            assert m["placement"]["checkpoints_read_per_rank"] == [models, 0], m["name"]


def test_gradients_are_reduced_in_fp32_under_bf16_compute(fsdp_grid):
    _, found, *_ = fsdp_grid
    for m in found:
        if m["kind"] in TRAINED:
            placed = m["placement"]
            assert placed["compute_dtypes"] == ["bfloat16"], m["name"]
            assert placed["reduce_dtypes"] == ["float32"], m["name"]  # TRL's fsdp2 config reduces in bf16
            assert placed["gradient_dtype"] == "float32", m["name"]


@pytest.fixture(scope="module")
def greedy_opd(fsdp_grid, tmp_path_factory):
    """`greedy_opd(placement)`: the manifest of the greedy opd-only node computed from the grid's inputs on 1
    process (unsharded), or on 2 under "fsdp2" or "zero3"; once per placement."""
    _, _, work, env = fsdp_grid
    done = {}

    def run(placement: str) -> dict:
        if placement not in done:
            on = {"launch": "process"} if placement == "one-process" else {"processes": 2, "strategy": placement}
            root = greedy_opd_root(work, tmp_path_factory.mktemp(f"opd-{placement}"), {"resources": {"opd": on}})
            grid(work, root, env).check_returncode()
            done[placement] = opd_manifest(root)
        return done[placement]

    return run


@pytest.mark.parametrize("strategy", ["fsdp2", "zero3"])
def test_opd_on_two_processes_trains_the_model_it_trains_on_one(fsdp_grid, greedy_opd, strategy):
    """The opd-only node from the same inputs, on 1 process (unsharded) and on 2 (FSDP2, or DeepSpeed ZeRO-3):
    the same update.

    Sampling is greedy (top_k 1), so both draw the same completions whatever each rank's seed; what may
    differ is rounding: bf16 compute under the sharded cast against autocast on 1 process, and the order
    of the reduction. A rank that trained on the wrong share of the batch, or gradients summed instead of
    averaged, moves the weights elsewhere, and so does a final model saved from ZeRO-3's bf16 copy rather
    than its fp32 master weights. Under both strategies each rank holds a part of the student and of the
    teacher, and gradients are accumulated and reduced in fp32 (TRL's zero3 config leaves them in bf16)."""
    found = fsdp_grid[1]
    one, manifest = greedy_opd("one-process"), greedy_opd(strategy)
    assert one["world_size"] == 1
    placed = manifest["placement"]
    assert (manifest["world_size"], placed["strategy"]) == (2, strategy)
    assert 0 < placed["student_local_fraction"] < 1 and 0 < placed["teacher_local_fraction"] < 1
    assert placed["gradients_sharded"] and placed["compute_dtypes"] == ["bfloat16"]
    assert (placed["gradient_dtype"], placed["reduce_dtypes"]) == ("float32", ["float32"])
    assert_same_update(update(found, one), update(found, manifest))


def test_a_stopped_sharded_node_resumes_from_the_shards_each_rank_wrote(fsdp_grid, greedy_opd, tmp_path):
    """A checkpoint holds one shard per rank of the model and of the optimizer (no rank gathers either); a node
    stopped mid-run resumes from them to the update an unstopped run trains (the FSDP2 run above), and ends with
    one whole model file."""
    _, found, work, env = fsdp_grid
    # The profile's placement (FSDP2 on 2 processes), a checkpoint at each step
    stopped = greedy_opd_root(work, tmp_path / "stopped", {"opd": {"save_steps": 1}})
    run = grid(work, stopped, env, wait=False)
    deadline = time.monotonic() + 600
    while not list(stopped.glob("opd/*/checkpoints/checkpoint-*/trainer_state.json")):
        assert run.poll() is None and time.monotonic() < deadline, "the node ended before its first checkpoint"
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)  # what Ctrl-C or a cancelled Prefect run does
    assert run.wait(timeout=120) != 0
    [checkpoint] = stopped.glob("opd/*/checkpoints/checkpoint-*")
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (checkpoint / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert not list(checkpoint.glob("*.safetensors"))

    grid(work, stopped, env).check_returncode()
    manifest = opd_manifest(stopped)
    assert manifest["resumed_from_step"] >= 1 and manifest["metrics"]["steps"] == GREEDY_STEPS
    assert [p.name for p in Path(manifest["outputs"]["model"]).glob("*.safetensors")] == ["model.safetensors"]
    assert_same_update(update(found, greedy_opd("fsdp2")), update(found, manifest))


def greedy_opd_root(work: Path, folder: Path, overrides: dict) -> Path:
    """A copy of the grid's artifacts (the OPD node's inputs, computed once) and a hub-smoke-fsdp profile with
    greedy OPD sampling for GREEDY_STEPS plus `overrides`, written beside it."""
    root = folder / "artifacts"
    shutil.copytree(work / "artifacts", root, symlinks=True)
    profile = {"extends": "hub-smoke-fsdp", "name": "hub-smoke-fsdp", **overrides}
    # Long enough to stop a run mid-way; one checkpoint, at the end, unless `overrides` ask for more (a ZeRO-3
    # checkpoint takes seconds on a CPU)
    profile["opd"] = {"top_k": 1, "steps": GREEDY_STEPS, "save_steps": GREEDY_STEPS} | overrides.get("opd", {})
    (folder / "profile.yaml").write_text(yaml.safe_dump(profile))
    return root


def grid(work: Path, root: Path, env: dict, wait: bool = True):
    """`s2d grid` of the opd-only arm over `root` with the profile beside it, run where the hub-smoke files are."""
    command = [sys.executable, "-m", "sparse2dense.cli", "grid", "--profile", str(root.parent / "profile.yaml"),
               "--arms", "opd-only", "--artifacts", str(root)]
    if not wait:
        return subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:
        print((done.stdout + done.stderr)[-4000:])
    return done


def opd_manifest(root: Path) -> dict:
    """The manifest of the greedy OPD node (top_k 1) under `root`."""
    [manifest] = [json.loads(p.read_text()) for p in root.glob("opd/*/manifest.json")
                  if json.loads((p.parent / "node.json").read_text())["params"]["spec"].get("top_k") == 1]
    return manifest


def update(found: list[dict], manifest: dict) -> torch.Tensor:
    """The OPD node's weights minus the student base's, flattened."""
    from safetensors.torch import load_file

    start = next(m for m in found if m["kind"] == "base" and m["name"] == "student")["outputs"]["model"]
    trained = load_file(Path(manifest["outputs"]["model"]) / "model.safetensors")
    before = load_file(Path(start) / "model.safetensors")
    assert all(trained[k].shape == v.shape for k, v in before.items())  # whole tensors, not a rank's shard
    return torch.cat([(trained[k].float() - before[k].float()).flatten() for k in sorted(before)])


def assert_same_update(one: torch.Tensor, two: torch.Tensor) -> None:
    assert one.norm() > 0
    assert torch.nn.functional.cosine_similarity(one, two, dim=0) > 0.99
    assert (one.norm() / two.norm()).item() == pytest.approx(1, abs=0.05)
