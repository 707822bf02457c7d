"""Every stage for real on the smoke profile: tiny models, a few steps, real trainers."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparse2dense import data
from sparse2dense.stages.distill import forward_kl, opd
from sparse2dense.stages.evaluate import evaluate
from sparse2dense.stages.grpo import grpo
from sparse2dense.stages.rollouts import rollouts

pytestmark = pytest.mark.slow


def weights(model_dir) -> dict:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def changed(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return any(not torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def splits(smoke):
    return data.splits(smoke.data)


@pytest.fixture(scope="module")
def teacher_rollouts(smoke, bases, splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("rollouts")
    return out, rollouts(smoke, smoke.rollouts, bases["teacher"], splits["distill"], out, seed=0)


def test_stage0_teacher_beats_student(smoke, bases):
    from sparse2dense.generation import TransformersGenerator
    from sparse2dense.models import load_model, load_tokenizer
    from sparse2dense.stages.base import accuracy

    test = data.benchmark(smoke.data.benchmarks[0], smoke.data).rows
    acc = {r: accuracy(TransformersGenerator(load_model(p, smoke.hardware), load_tokenizer(p)), test, smoke)
           for r, p in bases.items()}
    assert acc["teacher"] > acc["student"]


def test_grpo_changes_weights_and_logs_rewards(smoke, bases, splits, tmp_path):
    out = grpo(smoke, smoke.grpo, bases["teacher"], splits["labeled"], tmp_path, seed=0)
    assert changed(bases["teacher"], out["outputs"]["model"])
    history = json.loads((tmp_path / "log_history.json").read_text())
    rewards = [h["reward"] for h in history if "reward" in h]
    assert len(rewards) == smoke.grpo.steps and 0 < max(rewards) <= 1
    assert out["labels_used"] == min(32, smoke.grpo.steps * smoke.grpo.prompts_per_step)
    assert out["labels_on"] == "labeled" and out["compute_s"] > 0


def test_replay_spends_no_new_labels(smoke, bases, splits, tmp_path):
    out = grpo(smoke, smoke.student_grpo, bases["teacher"], splits["labeled"], tmp_path, seed=0, new_labels=False)
    assert out["labels_used"] == 0


def test_rollouts_are_teacher_samples(smoke, splits, teacher_rollouts):
    out_dir, out = teacher_rollouts
    rows = [json.loads(line) for line in (out_dir / "rollouts.jsonl").open()]
    assert len(rows) == len(splits["distill"].rows) * smoke.rollouts.samples_per_prompt
    assert all(r["prompt"][-1]["role"] == "user" and isinstance(r["completion"], str) for r in rows)
    assert out["metrics"]["tokens_generated"] == sum(r["num_tokens"] for r in rows)


def test_forward_kl_soft_lowers_kl_to_the_teacher(smoke, bases, teacher_rollouts, tmp_path):
    out = forward_kl(smoke, smoke.forward_kl, bases["student"], teacher_rollouts[0], tmp_path, seed=0)
    m = out["metrics"]
    assert m["forward_kl_after"] < m["forward_kl_before"]
    assert out["labels_used"] == 0


def test_forward_kl_hard_is_sft_on_teacher_samples(smoke, bases, teacher_rollouts, tmp_path):
    spec = smoke.forward_kl.model_copy(update={"target": "hard"})
    out = forward_kl(smoke, spec, bases["student"], teacher_rollouts[0], tmp_path, seed=0)
    assert out["metrics"]["forward_kl_after"] < out["metrics"]["forward_kl_before"]


def test_forward_kl_resumes_from_its_last_checkpoint(smoke, bases, teacher_rollouts, tmp_path):
    class Crash(Exception):
        pass

    def crash_at_3(step, _):
        if step == 3:
            raise Crash

    with pytest.raises(Crash):
        forward_kl(smoke, smoke.forward_kl, bases["student"], teacher_rollouts[0], tmp_path, seed=0,
                   on_log=crash_at_3)
    out = forward_kl(smoke, smoke.forward_kl, bases["student"], teacher_rollouts[0], tmp_path, seed=0)
    assert out["resumed_from_step"] == 2  # save_steps: 2
    assert out["metrics"]["steps"] == 2 * 2  # epochs x batches per epoch


def test_opd_lowers_reverse_kl_on_student_samples(smoke, bases, splits, tmp_path):
    out = opd(smoke, smoke.opd, bases["teacher"], bases["student"], splits["distill"], tmp_path, seed=0)
    m = out["metrics"]
    assert m["reverse_kl_after"] < m["reverse_kl_before"]
    assert changed(bases["student"], out["outputs"]["model"])


def test_opd_refuses_mismatched_vocabularies(smoke, bases, splits, tmp_path):
    from transformers import AutoConfig

    other = tmp_path / "other"
    config = AutoConfig.from_pretrained(bases["student"])
    config.vocab_size += 1
    config.save_pretrained(other)
    with pytest.raises(ValueError, match="vocabulary"):
        opd(smoke, smoke.opd, bases["teacher"], str(other), splits["distill"], tmp_path / "o", seed=0)


def test_evaluate_scores_every_benchmark_and_saves_samples(smoke, bases, tmp_path):
    out = evaluate(smoke, bases["teacher"], tmp_path, seed=0)
    m = out["metrics"]
    assert {"toy-test/avg@2", "toy-test/pass@1", "toy-test/pass@2", "toy-test/mean_response_tokens"} <= set(m)
    assert m["toy-test/pass@1"] == pytest.approx(m["toy-test/avg@2"])
    assert m["toy-test/pass@2"] >= m["toy-test/avg@2"]
    rows = [json.loads(line) for line in (tmp_path / "samples-toy-test.jsonl").open()]
    assert len(rows) == 24 and all(len(r["completions"]) == 2 for r in rows)
