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
