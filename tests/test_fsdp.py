"""The sharded path on a laptop: the hub-smoke grid with every training node under FSDP2 on 2 CPU processes.

What the paper's GPU runs depend on, measured in each training node's manifest (`placement`, written by the
main rank from the models as they were laid out): the student and the distillation teachers hold a shard
of their parameters on each rank, compute runs in bf16 and gradients are reduced in fp32, as sharded fp32
tensors."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from sparse2dense import hub_smoke

pytestmark = pytest.mark.slow
TRAINED = ("grpo", "replay", "forward_kl", "opd")  # the base nodes of a hub profile are only fetched


@pytest.fixture(scope="module")
def fsdp_grid(tmp_path_factory):
    work = tmp_path_factory.mktemp("hub-smoke-fsdp")
    env = hub_smoke.offline_env(work)

    def run(*args, timeout=1200):
        done = subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
        return done.stdout

    run("-m", "sparse2dense.hub_smoke", timeout=300)
    run("-m", "sparse2dense.cli", "grid", "--profile", "hub-smoke-fsdp")
    report = json.loads(run("-m", "sparse2dense.cli", "report", "--profile", "hub-smoke-fsdp", "--format", "json"))
    found = [json.loads(p.read_text()) for p in sorted((work / "artifacts").glob("*/*/manifest.json"))]
    return report, found, work, env


def test_every_arm_finishes_offline_with_its_training_nodes_sharded_on_two_processes(fsdp_grid):
    from sparse2dense.config import load_grid

    report, found, *_ = fsdp_grid
    assert {r["arm"] for r in report} == set(load_grid("allocation").arms)
    assert all(r["status"] == "completed" for r in report), report
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


def test_gradients_are_reduced_in_fp32_under_bf16_compute(fsdp_grid):
    _, found, *_ = fsdp_grid
    for m in found:
        if m["kind"] in TRAINED:
            placed = m["placement"]
            assert placed["compute_dtypes"] == ["bfloat16"], m["name"]
            assert placed["reduce_dtypes"] == ["float32"], m["name"]  # TRL's fsdp2 config reduces in bf16
            assert placed["gradient_dtype"] == "float32", m["name"]


def test_opd_on_two_processes_trains_the_model_it_trains_on_one(fsdp_grid, tmp_path):
    """The opd-only node from the same inputs, on 1 process (unsharded) and on 2 (FSDP2): the same update.

    Sampling is greedy (top_k 1), so both draw the same completions whatever each rank's seed; what may
    differ is rounding: bf16 compute under FSDP2's cast against autocast on 1 process, and the order of
    the reduction. A rank that trained on the wrong share of the batch, or gradients summed instead of
    averaged, moves the weights elsewhere."""
    from safetensors.torch import load_file

    _, found, work, env = fsdp_grid
    start = next(m for m in found if m["kind"] == "base" and m["name"] == "student")["outputs"]["model"]
    updates = {}
    for processes in (1, 2):
        root = tmp_path / f"artifacts-{processes}"
        shutil.copytree(work / "artifacts", root, symlinks=True)  # the OPD node's inputs, computed once
        profile = tmp_path / f"greedy-{processes}.yaml"
        resources = {"launch": "process"} if processes == 1 else {"processes": 2}
        profile.write_text(yaml.safe_dump({"extends": "hub-smoke-fsdp", "name": "hub-smoke-fsdp",
                                           "opd": {"top_k": 1}, "resources": {"opd": resources}}))
        done = subprocess.run([sys.executable, "-m", "sparse2dense.cli", "grid", "--profile", str(profile),
                               "--arms", "opd-only", "--artifacts", str(root)], cwd=work, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        [manifest] = [json.loads(p.read_text()) for p in root.glob("opd/*/manifest.json")
                      if json.loads((p.parent / "node.json").read_text())["params"]["spec"].get("top_k") == 1]
        assert manifest["world_size"] == processes
        trained = load_file(Path(manifest["outputs"]["model"]) / "model.safetensors")
        before = load_file(Path(start) / "model.safetensors")
        updates[processes] = torch.cat([(trained[k].float() - before[k].float()).flatten() for k in sorted(before)])
    one, two = updates[1], updates[2]
    assert one.norm() > 0
    assert torch.nn.functional.cosine_similarity(one, two, dim=0) > 0.99
    assert (one.norm() / two.norm()).item() == pytest.approx(1, abs=0.05)
