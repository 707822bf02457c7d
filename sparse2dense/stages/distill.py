"""The dense bridge: forward KL on teacher rollouts (Stage 2a), then on-policy distillation (2b).

Both compare full next-token distributions through TRL's chunked divergence kernel, so the
(tokens x vocabulary) logits of the two models are never held at once. Both run under
`accelerate launch` as they run in one process: the teacher is prepared (and, under DeepSpeed,
sharded) by the trainer beside the student.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset
from transformers import TrainingArguments
from trl import DistillationConfig, DistillationTrainer

from ..config import ForwardKLSpec, OPDSpec, Profile, SamplingSpec
from ..data import problems
from ..data.problems import Split
from ..generation import TransformersGenerator
from ..models import check_same_vocabulary, device_for, load_model, load_tokenizer, set_threads
from .common import (
    MODEL_DIR,
    DecayEveryParameter,
    checkpoint_step,
    log_summary,
    read_jsonl,
    result,
    run_trainer,
    stopwatch,
    trainer_args,
    vllm_args,
    world_size,
)
from .sharding import Sharded, shard_frozen
from .supervised import (
    FORWARD,
    REVERSE,
    ForwardKLTrainer,
    PadCollator,
    SupervisedTrainer,
    mean_divergence,
    sequence_row,
)

# --- forward KL on teacher rollouts ---------------------------------------------------


def forward_kl(profile: Profile, spec: ForwardKLSpec, student_path: str, rollouts_dir: Path, out: Path,
               seed: int, callbacks=()) -> dict:
    """Train the student toward the teacher on the teacher's own samples, token ids as sampled.

    `target: soft` matches the teacher's full distribution at every position; `hard` is SFT
    on the sampled tokens (the one-hot limit of the same objective).
    """
    set_threads(profile.hardware)
    trust = profile.models.trust_remote_code
    teacher_path = json.loads((Path(rollouts_dir) / "meta.json").read_text())["teacher"]
    check_same_vocabulary(teacher_path, student_path, trust)
    rows = [sequence_row(r["prompt_ids"], r["completion_ids"], spec.max_length)
            for r in read_jsonl(Path(rollouts_dir) / "rollouts.jsonl")]
    with stopwatch() as clock:
        tokenizer = load_tokenizer(student_path, trust)
        # Arguments first: under ZeRO-3 they make the model loads below shard while loading.
        args = TrainingArguments(**trainer_args(spec, profile.hardware, out, seed, steps=0, per_step=spec.batch_size,
                                                micro_batch=spec.micro_batch), num_train_epochs=spec.epochs)
        student = load_model(student_path, profile.hardware, trainable=True, trust_remote_code=trust)
        probing = spec.probe_size > 0 and world_size() == 1
        teacher = None
        if spec.target == "soft" or probing:
            teacher = load_model(teacher_path, profile.hardware, trainable=False, trust_remote_code=trust).eval()
        probe = _probe(rows[: spec.probe_size], tokenizer, student, teacher, profile) if probing else None
        before = probe() if probe else None
        common = dict(model=student, args=args, train_dataset=Dataset.from_list(rows),
                      data_collator=PadCollator(tokenizer.pad_token_id), processing_class=tokenizer,
                      callbacks=list(callbacks))
        trainer = ForwardKLTrainer(**common, teacher=teacher) if spec.target == "soft" else SupervisedTrainer(**common)
        history, resume = run_trainer(trainer, out)
        after = probe() if probe else None
    metrics = {"steps": trainer.state.global_step, **log_summary(history, "loss")}
    if probe:
        metrics |= {"forward_kl_before": before, "forward_kl_after": after}
    return result(model=out / MODEL_DIR, compute_s=clock["seconds"], resumed_from_step=checkpoint_step(resume),
                  metrics=metrics, placement=trainer.placement(getattr(trainer, "teacher", None)))


class _DistillationTrainer(DecayEveryParameter, Sharded, DistillationTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.is_fsdp_enabled:  # TRL prepares the teacher only for DeepSpeed: under FSDP it stays whole, on CPU
            self.teacher_model = shard_frozen(self.teacher_model, self.accelerator)


def _probe(rows: list[dict], tokenizer, student, teacher, profile: Profile):
    """KL(teacher || student) on a few rollouts, measured in one process."""
    device = device_for(profile.hardware)
    student.to(device)
    teacher.to(device)
    batch = {k: v.to(device) for k, v in PadCollator(tokenizer.pad_token_id)(rows).items()}
    return lambda: mean_divergence(student, teacher, batch, FORWARD)


# --- on-policy distillation -----------------------------------------------------------


def opd(profile: Profile, spec: OPDSpec, teacher_path: str, student_path: str, split: Split, out: Path,
        seed: int, callbacks=()) -> dict:
    """The student samples; the loss is its per-token full-vocabulary reverse KL to the teacher."""
    set_threads(profile.hardware)
    trust = profile.models.trust_remote_code
    check_same_vocabulary(teacher_path, student_path, trust)
    with stopwatch() as clock:
        tokenizer = load_tokenizer(student_path, trust)
        convs = [problems.messages(r["problem"], profile.data) for r in split.rows]
        config = opd_config(profile, spec, out, seed, tokenizer, convs)
        trainer = _DistillationTrainer(
            model=load_model(student_path, profile.hardware, trainable=True, trust_remote_code=trust),
            teacher_model=load_model(teacher_path, profile.hardware, trainable=False, trust_remote_code=trust),
            args=config,
            train_dataset=Dataset.from_list([{"prompt": c} for c in convs]),
            processing_class=tokenizer, callbacks=list(callbacks),
        )
        probe = _opd_probe(trainer, tokenizer, convs[: spec.probe_size], spec, profile, seed)
        before = probe() if probe else None
        history, resume = run_trainer(trainer, out)
        after = probe() if probe else None
    metrics = {"steps": trainer.state.global_step, **log_summary(history, "loss")}
    if probe:
        metrics |= {"reverse_kl_before": before, "reverse_kl_after": after}
    return result(model=out / MODEL_DIR, compute_s=clock["seconds"], resumed_from_step=checkpoint_step(resume),
                  metrics=metrics, placement=trainer.placement(trainer.teacher_model))


def _opd_probe(trainer, tokenizer, convs: list[list[dict]], spec: OPDSpec, profile: Profile, seed: int):
    """Reverse KL to the teacher on fresh student samples (what OPD minimises); one process only."""
    if not convs or world_size() > 1:
        return None

    def measure() -> float:
        student, teacher = trainer.model, trainer.accelerator.unwrap_model(trainer.teacher_model)
        sampling = SamplingSpec(temperature=spec.temperature, max_new_tokens=spec.max_completion_length)
        generator = TransformersGenerator(student, tokenizer, 256, profile.data.chat_template_kwargs, seed)
        samples = generator.generate(convs, sampling, n=1)
        rows = [sequence_row(s[0].prompt_ids, s[0].token_ids, 1 << 30) for s in samples]
        batch = {k: v.to(student.device) for k, v in PadCollator(tokenizer.pad_token_id)(rows).items()}
        return mean_divergence(student, teacher, batch, REVERSE)

    return measure


def opd_config(profile: Profile, spec: OPDSpec, out: Path, seed: int, tokenizer=None,
               prompts=()) -> DistillationConfig:
    return DistillationConfig(
        **trainer_args(spec, profile.hardware, out, seed, spec.steps, per_step=spec.prompts_per_step,
                       micro_batch=spec.micro_batch),
        beta=REVERSE, temperature=spec.temperature, top_k=spec.top_k, max_completion_length=spec.max_completion_length,
        chat_template_kwargs=profile.data.chat_template_kwargs or None,
        **vllm_args(profile, tokenizer, prompts, spec.max_completion_length),
    )
