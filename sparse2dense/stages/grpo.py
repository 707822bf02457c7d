"""Sparse RL: TRL's GRPOTrainer with a 0/1 correctness reward (Stage 1, direct, Stage 3, replay)."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from .. import data
from ..config import GRPOSpec, Profile
from ..data import Split
from ..models import load_model, load_tokenizer, set_threads
from ..verify import is_correct
from .common import MODEL_DIR, checkpoint_step, log_summary, result, run_trainer, stopwatch, trainer_args, vllm_args


def correctness_reward(completions, answer, **_) -> list[float]:
    """1 when the last boxed answer is right, else 0; TRL passes dataset columns by name."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [float(is_correct(t, a)) for t, a in zip(texts, answer)]


def grpo(profile: Profile, spec: GRPOSpec, model_path: str, split: Split, out: Path, seed: int,
         callbacks=(), new_labels: bool = True) -> dict:
    """GRPO from `model_path` on the labeled `split`; `new_labels=False` marks a replay of spent labels."""
    set_threads(profile.hardware)
    with stopwatch() as clock:
        tokenizer = load_tokenizer(model_path)
        dataset = Dataset.from_list(
            [{"prompt": data.messages(r["problem"], profile.data), "answer": r["answer"]} for r in split.rows])
        trainer = GRPOTrainer(
            model=load_model(model_path, profile.hardware), reward_funcs=correctness_reward,
            args=grpo_config(profile, spec, out, seed), train_dataset=dataset,
            processing_class=tokenizer, callbacks=list(callbacks),
        )
        history, resume = run_trainer(trainer, tokenizer, out)
    # Distinct labeled problems the sampler drew: every prompt once per pass over the split.
    drawn = min(len(split.rows), spec.steps * spec.prompts_per_step)
    return result(model=out / MODEL_DIR, compute_s=clock["seconds"], resumed_from_step=checkpoint_step(resume),
                  labels_used=drawn if new_labels else 0, labels_on=split.name,
                  metrics={"steps": trainer.state.global_step, **log_summary(history, "reward")})


def grpo_config(profile: Profile, spec: GRPOSpec, out: Path, seed: int) -> GRPOConfig:
    completions = spec.prompts_per_step * spec.num_generations
    accumulation = completions // spec.micro_batch
    return GRPOConfig(
        **trainer_args(spec, profile.hardware, out, seed, spec.steps),
        per_device_train_batch_size=spec.micro_batch, gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation * spec.steps_per_generation,
        num_generations=spec.num_generations, temperature=spec.temperature,
        max_completion_length=spec.max_completion_length, epsilon=spec.epsilon, epsilon_high=spec.epsilon_high,
        loss_type=spec.loss_type, beta=spec.beta, chat_template_kwargs=profile.data.chat_template_kwargs or None,
        **vllm_args(profile),
    )
