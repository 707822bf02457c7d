"""Every stage for real on the smoke profile: tiny models, a few steps, real trainers."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from sparse2dense.data import problems
from sparse2dense.stages.distill import forward_kl, opd
from sparse2dense.stages.evaluate import evaluate
from sparse2dense.stages.grpo import grpo
from sparse2dense.stages.rollouts import rollouts
from sparse2dense.stages.supervised import IGNORE, sequence_row

pytestmark = pytest.mark.slow


def weights(model_dir) -> dict:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def changed(a, b) -> bool:
    wa, wb = weights(a), weights(b)
    return any(not torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def splits(smoke):
    return problems.splits(smoke.data)


@pytest.fixture(scope="module")
def teacher_rollouts(smoke, bases, splits, tmp_path_factory):
    out = tmp_path_factory.mktemp("rollouts")
    return out, rollouts(smoke, smoke.rollouts, bases["teacher"], splits["distill"], out, seed=0)


def test_stage0_teacher_beats_student(smoke, bases):
    from sparse2dense.generation import TransformersGenerator
    from sparse2dense.models import load_model, load_tokenizer
    from sparse2dense.stages.base import accuracy

    test = problems.benchmark(smoke.data.benchmarks[0], smoke.data).rows
    acc = {r: accuracy(TransformersGenerator(load_model(p, smoke.hardware, trainable=False), load_tokenizer(p)), test,
                       smoke) for r, p in bases.items()}
    assert acc["teacher"] > acc["student"]


def test_grpo_changes_weights_and_counts_the_labels_it_read(smoke, bases, splits, tmp_path):
    out = grpo(smoke, smoke.grpo, bases["teacher"], splits["labeled"], tmp_path, seed=0)
    assert changed(bases["teacher"], out["outputs"]["model"])
    history = json.loads((tmp_path / "log_history.json").read_text())
    rewards = [h["reward"] for h in history if "reward" in h]
    assert len(rewards) == smoke.grpo.steps and 0 <= max(rewards) <= 1
    # Counted by the reward function, not planned: 4 steps x 4 prompts, each prompt read by its 4 samples.
    assert out["labels_used"] == out["metrics"]["labels_read"] == 16
    assert out["labels_on"] == "labeled" and out["compute_s"] > 0


def test_grpo_counts_labels_read_across_a_resume(smoke, bases, splits, tmp_path):
    spec = smoke.grpo.model_copy(update={"steps": 2, "save_steps": 1})
    grpo(smoke, spec, bases["teacher"], splits["labeled"], tmp_path, seed=0)
    longer = grpo(smoke, spec.model_copy(update={"steps": 4}), bases["teacher"], splits["labeled"], tmp_path, seed=0)
    assert longer["resumed_from_step"] == 2
    assert longer["labels_used"] == 16


def test_replay_spends_no_new_labels(smoke, bases, splits, tmp_path):
    out = grpo(smoke, smoke.student_grpo, bases["teacher"], splits["labeled"], tmp_path, seed=0, new_labels=False)
    assert out["labels_used"] == 0


def test_rollouts_keep_sampled_token_ids(smoke, splits, teacher_rollouts):
    out_dir, out = teacher_rollouts
    rows = [json.loads(line) for line in (out_dir / "rollouts.jsonl").open()]
    assert len(rows) == len(splits["distill"].rows) * smoke.rollouts.samples_per_prompt
    assert all(r["prompt"][-1]["role"] == "user" and isinstance(r["completion"], str) for r in rows)
    assert all(r["num_tokens"] == len(r["completion_ids"]) and r["prompt_ids"] for r in rows)
    assert out["metrics"]["tokens_generated"] == sum(r["num_tokens"] for r in rows)


def test_truncated_rollouts_never_get_an_end_token(smoke, bases, splits, tmp_path):
    from sparse2dense.models import load_tokenizer

    short = smoke.rollouts.model_copy(update={"max_new_tokens": 3})
    rollouts(smoke, short, bases["teacher"], splits["distill"], tmp_path, seed=0)
    rows = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").open()]
    eos = load_tokenizer(bases["teacher"]).eos_token_id
    assert rows and all(r["truncated"] and len(r["completion_ids"]) == 3 and eos not in r["completion_ids"]
                        for r in rows)
    trained = sequence_row(rows[0]["prompt_ids"], rows[0]["completion_ids"], 1 << 10)
    assert [t for t in trained["labels"] if t != IGNORE] == rows[0]["completion_ids"]


def test_forward_kl_soft_lowers_kl_to_the_teacher(smoke, bases, teacher_rollouts, tmp_path):
    out = forward_kl(smoke, smoke.forward_kl, bases["student"], teacher_rollouts[0], tmp_path, seed=0)
    m = out["metrics"]
    assert m["forward_kl_after"] < m["forward_kl_before"]
    assert out["labels_used"] == 0 and out["world_size"] == 1


def test_forward_kl_hard_is_sft_on_teacher_samples(smoke, bases, teacher_rollouts, tmp_path):
    spec = smoke.forward_kl.model_copy(update={"target": "hard"})
    out = forward_kl(smoke, spec, bases["student"], teacher_rollouts[0], tmp_path, seed=0)
    assert out["metrics"]["forward_kl_after"] < out["metrics"]["forward_kl_before"]


class Crash(Exception):
    pass


class CrashAtStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash


def test_forward_kl_resumes_from_its_last_checkpoint(smoke, bases, teacher_rollouts, tmp_path):
    with pytest.raises(Crash):
        forward_kl(smoke, smoke.forward_kl, bases["student"], teacher_rollouts[0], tmp_path, seed=0,
                   callbacks=[CrashAtStep(3)])
    out = forward_kl(smoke, smoke.forward_kl, bases["student"], teacher_rollouts[0], tmp_path, seed=0)
    assert out["resumed_from_step"] == 2  # save_steps: 2
    assert out["metrics"]["steps"] == 2 * 2  # epochs x batches per epoch


def test_bf16_training_keeps_fp32_master_weights_and_optimizer_state(smoke, bases, teacher_rollouts, tmp_path):
    """bf16 compute must not mean bf16 weights: at lr 1e-6 AdamW steps on bf16 weights mostly round to nothing."""
    bf16 = smoke.model_copy(update={"hardware": smoke.hardware.model_copy(update={"precision": "bf16"})})
    spec = smoke.forward_kl.model_copy(update={"learning_rate": 1e-6, "epochs": 1, "save_steps": 1})
    out = forward_kl(bf16, spec, bases["student"], teacher_rollouts[0], tmp_path, seed=0)
    before, after = weights(bases["student"]), weights(out["outputs"]["model"])
    assert all(t.dtype == torch.float32 for t in after.values())
    moved = sum(int((before[k] != after[k]).sum()) for k in after) / sum(t.numel() for t in after.values())
    assert moved > 0.9, f"only {moved:.1%} of the weights moved"
    checkpoint = sorted((tmp_path / "checkpoints").glob("checkpoint-*"))[-1]
    state = torch.load(checkpoint / "optimizer.pt", weights_only=False)["state"]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state.values())


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


def test_evaluate_scores_every_benchmark_and_saves_auditable_samples(smoke, bases, tmp_path):
    out = evaluate(smoke, smoke.evaluate, smoke.data.benchmarks, bases["teacher"], tmp_path, seed=0)
    m = out["metrics"]
    assert {"toy-test/avg@2", "toy-test/pass@1", "toy-test/pass@2", "toy-test/mean_response_tokens",
            "toy-test/truncated_fraction"} <= set(m)
    assert m["toy-test/pass@1"] == pytest.approx(m["toy-test/avg@2"])
    assert m["toy-test/pass@2"] >= m["toy-test/avg@2"]
    rows = [json.loads(line) for line in (tmp_path / "samples-toy-test.jsonl").open()]
    assert len(rows) == 24 and all(len(r["completions"]) == 2 for r in rows)
    assert all(r["prompt"][-1]["role"] == "user" and len(r["num_tokens"]) == len(r["truncated"]) == 2 for r in rows)


def test_weight_decay_reaches_every_parameter_as_in_the_authors_optimizer(smoke, bases, tmp_path):
    """verl decays norms and biases too; transformers' Trainer would skip the RMSNorm weights."""
    from transformers import TrainingArguments

    from sparse2dense.models import load_model
    from sparse2dense.stages.supervised import SupervisedTrainer

    model = load_model(bases["student"], smoke.hardware, trainable=True)
    trainer = SupervisedTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                    report_to="none", weight_decay=0.1))
    decayed = set(trainer.get_decay_parameter_names(model))
    assert any("norm" in name for name in decayed) and decayed == {n for n, _ in model.named_parameters()}
