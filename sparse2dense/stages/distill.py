"""The dense bridge: forward KL on teacher rollouts (Stage 2a), then on-policy distillation (2b).

Both compare full next-token distributions through TRL's chunked divergence kernel, so the
(tokens x vocabulary) logits of the two models are never held at once.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from datasets import Dataset
from trl import DistillationConfig, DistillationTrainer
from trl.kernels.chunked_divergence import ChunkedDivergenceFunction

from .. import data
from ..config import ForwardKLSpec, OPDSpec, Profile, SamplingSpec
from ..data import Split
from ..generation import TransformersGenerator
from ..models import check_same_vocabulary, load_model, load_tokenizer, save_model, set_threads
from . import loop
from .common import (
    MODEL_DIR,
    checkpoint_step,
    log_summary,
    read_jsonl,
    result,
    run_trainer,
    stopwatch,
    trainer_args,
    vllm_args,
)

FORWARD, REVERSE = 0.0, 1.0  # TRL's beta: 0 = KL(teacher || student), 1 = KL(student || teacher)
PROBE_SIZE = 64  # sequences on which each stage measures its divergence before and after
NO_TRUNCATION = 1 << 30  # sampled sequences are already bounded by max_new_tokens


def divergence_sum(student, teacher, micro: dict, beta: float) -> torch.Tensor:
    """Summed per-token divergence between the two models over micro['loss_mask'] positions."""
    mask = micro["loss_mask"][:, 1:].bool()
    h_s = _hidden(student, micro)[:, :-1][mask]
    with torch.no_grad():
        h_t = _hidden(teacher, micro)[:, :-1][mask]
    per_token, _ = ChunkedDivergenceFunction.apply(
        h_s, student.get_output_embeddings().weight, None,
        h_t.to(h_s.dtype), teacher.get_output_embeddings().weight, None, beta)
    return per_token.sum()


def _hidden(model, micro: dict) -> torch.Tensor:
    backbone = getattr(model, model.base_model_prefix)
    return backbone(input_ids=micro["input_ids"], attention_mask=micro["attention_mask"]).last_hidden_state


@torch.no_grad()
def mean_divergence(student, teacher, micro: dict, beta: float) -> float:
    tokens = int(micro["loss_mask"][:, 1:].sum()) or 1
    return float(divergence_sum(student, teacher, micro, beta)) / tokens


# --- forward KL on teacher rollouts ---------------------------------------------------


def forward_kl(profile: Profile, spec: ForwardKLSpec, student_path: str, rollouts_dir: Path, out: Path,
               seed: int, on_log=None) -> dict:
    """Train the student toward the teacher on the teacher's own samples.

    `target: soft` matches the teacher's full distribution at every position; `hard` is SFT
    on the sampled tokens (the one-hot limit of the same objective).
    """
    set_threads(profile.hardware)
    meta = _read_meta(rollouts_dir)
    rows = read_jsonl(rollouts_dir / "rollouts.jsonl")
    with stopwatch() as clock:
        tokenizer = load_tokenizer(student_path)
        student = load_model(student_path, profile.hardware)
        teacher = None
        if spec.target == "soft":
            check_same_vocabulary(meta["teacher"], student_path)
            teacher = load_model(meta["teacher"], profile.hardware, device=student.device).eval()
        per_epoch = -(-len(rows) // spec.batch_size)
        steps = spec.epochs * per_epoch

        def batch_at(step: int):
            epoch, index = divmod(step - 1, per_epoch)
            order = list(range(len(rows)))
            random.Random(seed * 1_000 + epoch).shuffle(order)
            chosen = [rows[i] for i in order[index * spec.batch_size : (index + 1) * spec.batch_size]]
            enc = _encode(tokenizer, chosen, spec.max_length, profile)
            return [loop.to_device(m, student.device) for m in loop.split_micro(enc, spec.micro_batch)]

        def loss(model, micro):
            if teacher is None:
                return loop.cross_entropy_sum(model, micro)
            return divergence_sum(model, teacher, micro, FORWARD)

        probe = loop.to_device(_encode(tokenizer, rows[:PROBE_SIZE], spec.max_length, profile), student.device)
        probe_teacher = teacher or load_model(meta["teacher"], profile.hardware, device=student.device).eval()
        before = mean_divergence(student, probe_teacher, probe, FORWARD)
        run = loop.train(student, spec, steps, batch_at, loss, out, on_log=on_log)
        after = mean_divergence(student, probe_teacher, probe, FORWARD)
        save_model(student, tokenizer, out / MODEL_DIR)
    return result(model=out / MODEL_DIR, compute_s=clock["seconds"], resumed_from_step=run.resumed_from_step,
                  metrics={"steps": run.steps, "loss_last": run.last_loss,
                           "forward_kl_before": before, "forward_kl_after": after})


def _encode(tokenizer, rows: list[dict], max_length: int, profile: Profile) -> dict:
    return loop.encode(tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows], max_length,
                       profile.data.chat_template_kwargs)


def _read_meta(rollouts_dir: Path) -> dict:
    return json.loads((Path(rollouts_dir) / "meta.json").read_text())


# --- on-policy distillation -----------------------------------------------------------


def opd(profile: Profile, spec: OPDSpec, teacher_path: str, student_path: str, split: Split, out: Path,
        seed: int, callbacks=()) -> dict:
    """The student samples; the loss is its per-token full-vocabulary reverse KL to the teacher."""
    set_threads(profile.hardware)
    check_same_vocabulary(teacher_path, student_path)
    with stopwatch() as clock:
        tokenizer = load_tokenizer(student_path)
        student = load_model(student_path, profile.hardware)
        teacher = load_model(teacher_path, profile.hardware, device=student.device).eval()
        convs = [data.messages(r["problem"], profile.data) for r in split.rows]
        probe_prompts = convs[:PROBE_SIZE]
        before = _reverse_kl_on_samples(student, teacher, tokenizer, probe_prompts, spec, profile, seed)
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=opd_config(profile, spec, out, seed),
            train_dataset=Dataset.from_list([{"prompt": c} for c in convs]),
            processing_class=tokenizer, callbacks=list(callbacks),
        )
        history, resume = run_trainer(trainer, tokenizer, out)
        after = _reverse_kl_on_samples(trainer.model, teacher, tokenizer, probe_prompts, spec, profile, seed)
    return result(model=out / MODEL_DIR, compute_s=clock["seconds"], resumed_from_step=checkpoint_step(resume),
                  metrics={"steps": trainer.state.global_step, **log_summary(history, "loss"),
                           "reverse_kl_before": before, "reverse_kl_after": after})


def _reverse_kl_on_samples(student, teacher, tokenizer, convs, spec: OPDSpec, profile: Profile, seed: int):
    """Reverse KL to the teacher on fresh samples of the student: what OPD minimises."""
    sampling = SamplingSpec(temperature=spec.temperature, max_new_tokens=spec.max_completion_length)
    samples = TransformersGenerator(student, tokenizer, 256, profile.data.chat_template_kwargs).generate(
        convs, sampling, n=1, seed=seed)
    rows = [{"prompt": c, "completion": s[0].text} for c, s in zip(convs, samples)]
    micro = loop.to_device(_encode(tokenizer, rows, NO_TRUNCATION, profile), student.device)
    return mean_divergence(student, teacher, micro, REVERSE)


def opd_config(profile: Profile, spec: OPDSpec, out: Path, seed: int) -> DistillationConfig:
    return DistillationConfig(
        **trainer_args(spec, profile.hardware, out, seed, spec.steps),
        per_device_train_batch_size=spec.micro_batch,
        gradient_accumulation_steps=spec.prompts_per_step // spec.micro_batch,
        beta=REVERSE, temperature=spec.temperature, max_completion_length=spec.max_completion_length,
        chat_template_kwargs=profile.data.chat_template_kwargs or None, **vllm_args(profile),
    )
