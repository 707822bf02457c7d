"""Base models: hub models are fetched as they are; toy models are built and pretrained ("stage 0").

Stage 0 trains on generated worked solutions and stops at a dev-set accuracy target rather
than a step count: toy accuracy jumps abruptly, so a fixed step count lands anywhere.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments

from .. import data, toy_task
from ..config import ModelSpec, Profile, SamplingSpec
from ..generation import TransformersGenerator
from ..models import build_toy_model, build_toy_tokenizer, set_threads
from ..verify import is_correct
from .common import (
    MODEL_DIR,
    checkpoint_step,
    result,
    run_trainer,
    stopwatch,
    trainer_args,
    world_size,
)
from .supervised import PadCollator, SupervisedTrainer, sequence_row

_DEV_SEED, _TRAIN_SEED = 3_000, 4_000
_GREEDY = SamplingSpec(temperature=0, max_new_tokens=64)
_MAX_LENGTH = 128


def prepare_base(profile: Profile, role: str, spec: ModelSpec, out: Path, callbacks=()) -> dict:
    """The base teacher or student (`role`), ready for the stages that start from it."""
    if spec.source == "hub":
        from ..identity import fetch_model

        with stopwatch() as clock:
            local = fetch_model(spec)
        return result(model=local, compute_s=clock["seconds"])
    set_threads(profile.hardware)
    with stopwatch() as clock:
        tokenizer = build_toy_tokenizer()
        seed = profile.seed + (0 if role == "teacher" else 1)
        pretrain = spec.pretrain
        model = build_toy_model(spec.arch, tokenizer, seed)
        dev, taboo = _dev_set(profile)
        stop = _StopAtDevAccuracy(model, tokenizer, dev, profile, pretrain.target_accuracy, pretrain.eval_every)
        rows = _WorkedSolutions(profile, tokenizer, pretrain.max_steps * pretrain.batch_size, seed, taboo)
        args = TrainingArguments(**trainer_args(pretrain, profile.hardware, out, seed, pretrain.max_steps,
                                                per_step=pretrain.batch_size, micro_batch=_micro(pretrain)))
        trainer = SupervisedTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                                    data_collator=PadCollator(tokenizer.pad_token_id), callbacks=[stop, *callbacks])
        _, resume = run_trainer(trainer, out)
        final = accuracy(stop.generator, dev, profile)
    return result(model=out / MODEL_DIR, compute_s=clock["seconds"], resumed_from_step=checkpoint_step(resume),
                  metrics={"dev_accuracy": final, "steps": trainer.state.global_step,
                           "params": model.num_parameters()})


def _micro(pretrain) -> int:
    return pretrain.batch_size // world_size()


class _WorkedSolutions(torch.utils.data.Dataset):
    """Row i of stage 0's supply of worked solutions, generated from (seed, i): nothing to store, exact on resume."""

    def __init__(self, profile: Profile, tokenizer, size: int, seed: int, taboo: set[str]):
        self.profile, self.tokenizer, self.size, self.seed, self.taboo = profile, tokenizer, size, seed, taboo

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        row = toy_task.generate(self.profile.data.toy, 1, seed=_TRAIN_SEED + 7919 * self.seed + 104_729 * i,
                                exclude=self.taboo)[0]
        prompt = self.tokenizer.apply_chat_template(data.messages(row["problem"], self.profile.data), tokenize=False,
                                                    add_generation_prompt=True)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        # A worked solution is complete, so it ends with the end token the model must learn to emit.
        completion = self.tokenizer(row["solution"], add_special_tokens=False)["input_ids"]
        return sequence_row(prompt_ids, completion + [self.tokenizer.eos_token_id], _MAX_LENGTH)


class _StopAtDevAccuracy(TrainerCallback):
    """Every `every` steps: greedy dev accuracy, logged; training stops once it reaches `target`."""

    def __init__(self, model, tokenizer, dev: list[dict], profile: Profile, target: float, every: int):
        self.generator = TransformersGenerator(model, tokenizer, batch_size=256)
        self.dev, self.profile, self.target, self.every = dev, profile, target, every
        self.pending: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0:
            self.pending = accuracy(self.generator, self.dev, self.profile)
            control.should_log = True
            control.should_training_stop = self.pending >= self.target

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.pending is not None:
            logs["dev_accuracy"], self.pending = self.pending, None


def _dev_set(profile: Profile) -> tuple[list[dict], set[str]]:
    """The dev set, and every problem stage 0 must not train on (dev and benchmarks)."""
    toy = profile.data.toy
    bench = [r["problem"] for b in profile.data.benchmarks for r in data.benchmark(b, profile.data).rows]
    spec = profile.models.teacher.pretrain
    dev = toy_task.generate(toy, spec.dev_size, seed=_DEV_SEED + profile.seed, exclude=set(bench))
    return dev, set(bench) | {r["problem"] for r in dev}


def accuracy(generator, rows: list[dict], profile: Profile) -> float:
    """Greedy accuracy on rows {problem, answer}."""
    convs = [data.messages(r["problem"], profile.data) for r in rows]
    samples = generator.generate(convs, _GREEDY, n=1)
    return sum(is_correct(s[0].text, r["answer"]) for s, r in zip(samples, rows)) / len(rows)
