"""scripts/gpu_check.py at tiny shapes on the CPU: every step through the stage code, one JSON object out."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"
TRAINING = ("grpo", "forward_kl", "opd")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--steps", "all",
                           "--work", str(tmp / "work"), "--json", str(tmp / "gpu_check.json")],
                          capture_output=True, text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout)
    assert printed == json.loads((tmp / "gpu_check.json").read_text())  # the file holds what was printed
    return printed


def test_every_step_runs_through_the_stage_code(report):
    assert report["ran"] == ["build", "grpo", "rollouts", "forward_kl", "opd", "evaluate", "grpo_launched",
                             "opd_fsdp2", "forward_kl_fsdp2"]
    assert report["failed"] == [] and report["skipped"] == ["vllm"]  # no vLLM here: skipped, not failed
    assert "vllm" in report["steps"]["vllm"]["skipped"]
    for name in TRAINING:
        step = report["steps"][name]
        assert step["optimizer_steps"] == 1 and step["step_seconds"][0] > 0 and step["seconds"] > 0
        assert step["metrics"]["steps"] == 1
    launched = report["steps"]["grpo_launched"]
    assert launched["status"] == "completed" and launched["metrics"]["steps"] == 1 and launched["world_size"] == 1


def test_the_distillation_steps_run_launched_under_fsdp2_with_the_teacher_sharded(report):
    """On a CPU the FSDP2 steps take 2 processes (on the GPU, 1): each rank holds a part of both models."""
    for name in ("opd_fsdp2", "forward_kl_fsdp2"):
        step = report["steps"][name]
        placement = step["placement"]
        assert step["status"] == "completed" and step["world_size"] == 2 and step["metrics"]["steps"] == 1
        assert placement["strategy"] == "fsdp2" and placement["gradients_sharded"]
        assert placement["student_local_fraction"] < 1 and placement["teacher_local_fraction"] < 1
        assert placement["reduce_dtypes"] == ["float32"]


def test_models_have_the_real_vocabulary_and_a_qwen3_tokenizer(report):
    build = report["steps"]["build"]
    assert build["student"]["embedding_rows"] == build["teacher"]["embedding_rows"] == 151_936
    assert build["student"]["tie_word_embeddings"] and not build["teacher"]["tie_word_embeddings"]
    assert build["tokenizer"]["tokenizer_length"] == 151_669  # Qwen3's: 151,643 regular + 26 added tokens
    assert (build["tokenizer"]["eos"], build["tokenizer"]["pad"]) == (151_645, 151_643)  # <|im_end|>, <|endoftext|>
    assert build["answer_checker_ok"] is True


def test_generation_figures_and_no_gpu_claims_on_cpu(report):
    gen = report["generation"]["transformers"]
    assert gen["student_1.7b"]["tokens_per_s"] > 0 and gen["teacher_8b"]["tokens_per_s"] > 0
    assert report["generation"]["vllm"] is None
    assert report["device"] == "cpu" and report["gpu_measured"] is False and report["gpu_total_gib"] is None
    assert not any(key.startswith("peak_gpu") for step in report["steps"].values() for key in step)
    assert report["versions"]["torch"] and report["versions"]["transformers"]
    assert set(report["summary"]) == set(report["steps"])


def test_each_step_carries_what_the_plan_predicts_for_its_node(report):
    """The plan's peak per GPU for the step's node at the check's shapes; a ratio only where a GPU measured it."""
    steps = report["steps"]
    for name in ("grpo", "rollouts", "forward_kl", "opd", "evaluate", "grpo_launched", "opd_fsdp2",
                 "forward_kl_fsdp2"):
        step = steps[name]
        assert step["planned_peak_gib"] == pytest.approx(sum(step["planned_parts_gib"].values()), abs=0.01)
        assert step["planned_peak_gib"] > 0 and "measured_over_planned" not in step  # no GPU figure on a CPU
        assert report["summary"][name]["planned_peak_gib"] == step["planned_peak_gib"]
    for kind in ("opd", "forward_kl"):  # the FSDP2 variant (2 processes on a CPU) shards both models in two
        whole, sharded = steps[kind]["planned_parts_gib"], steps[f"{kind}_fsdp2"]["planned_parts_gib"]
        assert sharded["trained model"] == pytest.approx(whole["trained model"] / 2, rel=1e-3)
        assert sharded["frozen models"] == pytest.approx(whole["frozen models"] / 2, rel=1e-3)
    assert "frozen models" not in steps["grpo"]["planned_parts_gib"]  # beta 0: no reference model


def test_the_ratio_takes_the_launched_step_s_device_use_above_what_it_held_before():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    planned = {"peak_gib": 20.0, "parts_gib": {"trained model": 19.0, "overhead": 1.0}}
    inline = gpu_check.against_plan({"peak_gpu_allocated_gib": 15.0}, planned)
    launched = gpu_check.against_plan({"peak_gpu_allocated_gib": 0.5, "peak_device_used_gib": 26.0,
                                       "device_used_before_gib": 1.0}, planned)
    assert (inline["measured_over_planned"], launched["measured_over_planned"]) == (0.75, 1.25)
    assert gpu_check.against_plan({"peak_gpu_allocated_gib": 15.0}, None) == {}
