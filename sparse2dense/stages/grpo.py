"""Sparse RL: TRL's GRPOTrainer with a 0/1 correctness reward (Stage 1, direct, Stage 3, replay)."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from ..config import GRPOSpec, Profile
from ..data import problems
from ..data.problems import Split
from ..data.verify import is_correct
from ..models import load_model, load_tokenizer, set_threads
from .common import (
    MODEL_DIR,
    DecayEveryParameter,
    checkpoint_step,
    is_main_process,
    last_checkpoint,
    log_summary,
    result,
    run_trainer,
    stopwatch,
    trainer_args,
    vllm_args,
)
from .sharding import Sharded


class LabelLedger(TrainerCallback):
    """The 0/1 reward, and a record of which labeled problems it actually read.

    The record travels with every checkpoint, so a resumed run still counts what it read before.
    """

    def __init__(self, checker: str):
        self.checker = checker
        self.seen: set[str] = set()

    def correctness(self, completions, answer, id, **_) -> list[float]:
        """1 when the last boxed answer is right, else 0; TRL passes dataset columns by name."""
        self.seen.update(id)
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(is_correct(t, a, self.checker)) for t, a in zip(texts, answer)]

    def on_save(self, args, state, control, **kwargs):
        self._write(Path(args.output_dir) / f"checkpoint-{state.global_step}", args.process_index)

    def restore(self, checkpoint: str | None) -> None:
        if checkpoint:
            self.seen |= _read_seen(Path(checkpoint))

    def total(self, trainer, out: Path) -> int:
        """Distinct labels read by every process together."""
        self._write(out, trainer.args.process_index)
        trainer.accelerator.wait_for_everyone()
        return len(_read_seen(out)) if is_main_process() else 0

    def _write(self, folder: Path, rank: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"labels_seen-{rank}.json").write_text(json.dumps(sorted(self.seen)))


def _read_seen(folder: Path) -> set[str]:
    return {i for f in folder.glob("labels_seen-*.json") for i in json.loads(f.read_text())}


def grpo(profile: Profile, spec: GRPOSpec, model_path: str, split: Split, out: Path, seed: int,
         callbacks=(), new_labels: bool = True) -> dict:
    """GRPO from `model_path` on the labeled `split`; `new_labels=False` marks a replay of spent labels."""
    set_threads(profile.hardware)
    ledger = LabelLedger(profile.data.checker)
    with stopwatch() as clock:
        tokenizer = load_tokenizer(model_path, profile.models.trust_remote_code)
        prompts = [problems.messages(r["problem"], profile.data) for r in split.rows]
        dataset = Dataset.from_list([{"prompt": p, "answer": r["answer"], "id": r["id"]}
                                     for p, r in zip(prompts, split.rows)])
        trainer = _GRPOTrainer(  # the policy in fp32 (master weights); a reference model (beta > 0) is built alike
            model=load_model(model_path, profile.hardware, trainable=True,
                             trust_remote_code=profile.models.trust_remote_code),
            reward_funcs=ledger.correctness,
            args=grpo_config(profile, spec, out, seed, tokenizer, prompts),
            train_dataset=dataset, processing_class=tokenizer, callbacks=[ledger, *callbacks],
        )
        ledger.restore(last_checkpoint(out))
        history, resume = run_trainer(trainer, out)
        read = ledger.total(trainer, out)
    return result(model=out / MODEL_DIR, compute_s=clock["seconds"], resumed_from_step=checkpoint_step(resume),
                  labels_used=read if new_labels else 0, labels_on=split.name, placement=trainer.placement(),
                  metrics={"steps": trainer.state.global_step, "labels_read": read, **log_summary(history, "reward")})


class _GRPOTrainer(DecayEveryParameter, Sharded, GRPOTrainer):
    pass


def grpo_config(profile: Profile, spec: GRPOSpec, out: Path, seed: int, tokenizer=None, prompts=()) -> GRPOConfig:
    args = trainer_args(spec, profile.hardware, out, seed, spec.steps,
                        per_step=spec.prompts_per_step * spec.num_generations, micro_batch=spec.micro_batch)
    return GRPOConfig(
        **args, steps_per_generation=args["gradient_accumulation_steps"] * spec.steps_per_generation,
        num_generations=spec.num_generations, temperature=spec.temperature,
        max_completion_length=spec.max_completion_length, epsilon=spec.epsilon, epsilon_high=spec.epsilon_high,
        delta=spec.dual_clip, vllm_importance_sampling_correction=spec.importance_sampling_correction,
        loss_type=spec.loss_type, beta=spec.beta, chat_template_kwargs=profile.data.chat_template_kwargs or None,
        **vllm_args(profile, tokenizer, prompts, spec.max_completion_length),
    )
