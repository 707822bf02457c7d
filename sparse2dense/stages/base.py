"""Base models: hub models are fetched as they are; toy models are built and pretrained ("stage 0").

Stage 0 trains on generated worked solutions toward a dev-set accuracy target rather than for a
step count: toy accuracy jumps abruptly, so a fixed step count lands anywhere. It checks more often
near the target, stops at the first check at or above it, and keeps the checked weights closest to
it (a jump can carry the first check above the target far past it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments

from ..config import ModelSpec, Profile, SamplingSpec
from ..data import problems, toy_task
from ..data.verify import is_correct
from ..generation import TransformersGenerator
from ..models import build_toy_model, build_toy_tokenizer, set_threads
from .common import MODEL_DIR, checkpoint_step, result, run_trainer, stopwatch, trainer_args, world_size, write_json
from .supervised import PadCollator, SupervisedTrainer, sequence_row

_DEV_SEED, _TRAIN_SEED = 3_000, 4_000
_GREEDY = SamplingSpec(temperature=0, max_new_tokens=64)
_MAX_LENGTH = 128


def prepare_base(profile: Profile, role: str, spec: ModelSpec, out: Path, seed: int, callbacks=()) -> dict:
    """The base teacher or student (`role`), ready for the stages that start from it; a toy one drawn with
    `seed` (its node's: the profile's, plus the grid seed under `seed_scope: all`)."""
    if spec.source == "hub":
        from ..identity import fetch_model

        with stopwatch() as clock:
            local = fetch_model(spec)
        return result(model=local, compute_s=clock["seconds"])
    set_threads(profile.hardware)
    with stopwatch() as clock:
        tokenizer = build_toy_tokenizer()
        seed += 0 if role == "teacher" else 1
        pretrain = spec.pretrain
        model = build_toy_model(spec.arch, tokenizer, seed)
        dev, taboo = _dev_set(profile)
        stop = _ClosestToTarget(model, tokenizer, dev, profile, pretrain.target_accuracy, pretrain.eval_every,
                                out / "closest")
        rows = _WorkedSolutions(profile, tokenizer, pretrain.max_steps * pretrain.batch_size, seed, taboo)
        args = TrainingArguments(**trainer_args(pretrain, profile.hardware, out, seed, pretrain.max_steps,
                                                per_step=pretrain.batch_size, micro_batch=_micro(pretrain)))
        trainer = SupervisedTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer,
                                    data_collator=PadCollator(tokenizer.pad_token_id), callbacks=[stop, *callbacks])
        _, resume = run_trainer(trainer, out)
        final = accuracy(stop.generator, dev, profile)
    return result(model=out / MODEL_DIR, compute_s=clock["seconds"], resumed_from_step=checkpoint_step(resume),
                  metrics={"dev_accuracy": final, "dev_target": pretrain.target_accuracy, "kept_step": stop.kept_step,
                           "steps": trainer.state.global_step, "dev_checks": len(stop.checked),
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
        messages = problems.messages(row["problem"], self.profile.data)
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        # A worked solution is complete, so it ends with the end token the model must learn to emit.
        completion = self.tokenizer(row["solution"], add_special_tokens=False)["input_ids"]
        return sequence_row(prompt_ids, completion + [self.tokenizer.eos_token_id], _MAX_LENGTH)


class _ClosestToTarget(TrainerCallback):
    """Greedy dev accuracy every `every` steps, every `every // 4` from half the target on; training stops at
    the first check at or above `target`, and the model ends as the checked weights closest to it.

    The closest weights so far are kept in memory and in `folder` (written by the main process), so a
    resumed run keeps what the stopped one had checked."""

    def __init__(self, model, tokenizer, dev: list[dict], profile: Profile, target: float, every: int,
                 folder: Path):
        self.generator = TransformersGenerator(model, tokenizer, batch_size=256)
        self.model, self.dev, self.profile, self.target, self.every = model, dev, profile, target, every
        self.folder, self.near = folder, False
        self.checked: list[tuple[int, float]] = []  # (step, dev accuracy) of every check
        self.pending: float | None = None
        self.kept: tuple[float, int, dict] | None = None  # (distance to the target, step, weights)

    @property
    def kept_step(self) -> int | None:
        return self.kept[1] if self.kept else None

    def on_train_begin(self, args, state, control, **kwargs):
        """Resumed: the checks up to the checkpoint and the closest weights the stopped run had checked (perhaps
        past the checkpoint: redone, those checks give the same accuracies and weights)."""
        if not (self.folder / "closest.json").exists():
            return
        from safetensors.torch import load_file

        facts = json.loads((self.folder / "closest.json").read_text())
        self.checked = [(step, acc) for step, acc in facts["checked"] if step <= state.global_step]
        self.near = any(acc >= self.target / 2 for _, acc in self.checked)
        self.kept = (facts["distance"], facts["step"], load_file(self.folder / "model.safetensors"))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % (max(1, self.every // 4) if self.near else self.every):
            return
        self.pending = accuracy(self.generator, self.dev, self.profile)
        self.checked.append((state.global_step, self.pending))
        self.near = self.near or self.pending >= self.target / 2
        distance = abs(self.pending - self.target)
        if self.kept is None or distance <= self.kept[0]:  # a tie: the later, more trained weights
            weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.kept = (distance, state.global_step, weights)
            if args.should_save:
                self._write(weights=True)
        elif args.should_save:
            self._write(weights=False)
        control.should_log = True
        control.should_training_stop = self.pending >= self.target

    def on_train_end(self, args, state, control, **kwargs):
        if self.kept is not None:
            self.model.load_state_dict(self.kept[2])

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and self.pending is not None:  # the trainer has copied `logs` into its history
            logs["dev_accuracy"] = state.log_history[-1]["dev_accuracy"] = self.pending
            self.pending = None

    def _write(self, weights: bool) -> None:
        from safetensors.torch import save_file

        if weights:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / "model.safetensors.tmp"
            save_file({k: v.contiguous() for k, v in self.kept[2].items()}, str(tmp))
            os.replace(tmp, self.folder / "model.safetensors")
        write_json(self.folder / "closest.json", {"distance": self.kept[0], "step": self.kept[1],
                                                  "checked": self.checked})


def _dev_set(profile: Profile) -> tuple[list[dict], set[str]]:
    """The dev set, and every problem stage 0 must not train on (dev and benchmarks)."""
    toy = profile.data.toy
    bench = [r["problem"] for b in profile.data.benchmarks for r in problems.benchmark(b, profile.data).rows]
    spec = profile.models.teacher.pretrain
    dev = toy_task.generate(toy, spec.dev_size, seed=_DEV_SEED + profile.seed, exclude=set(bench))
    return dev, set(bench) | {r["problem"] for r in dev}


def accuracy(generator, rows: list[dict], profile: Profile) -> float:
    """Greedy accuracy on rows {problem, answer}."""
    convs = [problems.messages(r["problem"], profile.data) for r in rows]
    samples = generator.generate(convs, _GREEDY, n=1)
    return sum(is_correct(s[0].text, r["answer"]) for s, r in zip(samples, rows)) / len(rows)
