"""A small supervised training loop for losses TRL has no trainer for (stage 0, forward KL).

Token-mean loss with gradient accumulation, AdamW with warmup and clipping, checkpoints that
hold the optimizer too, so a run killed at step N resumes at N with the same data order.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import get_constant_schedule_with_warmup

from ..config import TrainSpec
from .common import CHECKPOINTS, checkpoint_step, last_checkpoint

# A batch is a list of micro-batches (input_ids, attention_mask, loss_mask); a loss function
# maps one to the sum of its per-token losses over loss_mask.
Batch = list[dict]
LossFn = Callable[[torch.nn.Module, dict], torch.Tensor]


@dataclass
class LoopResult:
    steps: int
    resumed_from_step: int | None
    last_loss: float


def train(model, spec: TrainSpec, steps: int, batch_at: Callable[[int], Batch], loss_fn: LossFn, out: Path,
          on_log: Callable[[int, dict], None] | None = None,
          should_stop: Callable[[int], bool] | None = None, check_every: int = 0) -> LoopResult:
    """Run `steps` optimizer steps; `batch_at(step)` must be deterministic so resuming is exact."""
    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=spec.weight_decay)
    sched = get_constant_schedule_with_warmup(opt, int(spec.warmup_ratio * steps))
    start = _resume(model, opt, sched, out)
    model.train()
    loss_value, step = float("nan"), start
    for step in range(start + 1, steps + 1):
        loss_value = _step(model, opt, sched, spec, batch_at(step), loss_fn)
        if on_log and (step % spec.logging_steps == 0 or step == steps):
            on_log(step, {"loss": loss_value, "learning_rate": sched.get_last_lr()[0]})
        if step % spec.save_steps == 0:
            _save(model, opt, sched, out, step)
        if should_stop and check_every and step % check_every == 0 and should_stop(step):
            break
    return LoopResult(step, start or None, loss_value)


def _step(model, opt, sched, spec: TrainSpec, batch: Batch, loss_fn: LossFn) -> float:
    # Token-mean over the whole batch, accumulated one micro-batch at a time.
    tokens = sum(int(micro["loss_mask"].sum()) for micro in batch) or 1
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for micro in batch:
        loss = loss_fn(model, micro) / tokens
        loss.backward()
        total += loss.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), spec.max_grad_norm)
    opt.step()
    sched.step()
    return total


def _save(model, opt, sched, out: Path, step: int) -> None:
    folder = out / CHECKPOINTS
    tmp = folder / f"tmp-{step}"
    model.save_pretrained(tmp)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "trainer_state.pt")
    tmp.rename(folder / f"checkpoint-{step}")  # complete checkpoints only ever appear whole
    for old in folder.glob("checkpoint-*"):
        if old.name != f"checkpoint-{step}":
            shutil.rmtree(old)


def _resume(model, opt, sched, out: Path) -> int:
    path = last_checkpoint(out)
    if path is None:
        return 0
    from safetensors.torch import load_model

    load_model(model, str(Path(path) / "model.safetensors"), strict=False)
    state = torch.load(Path(path) / "trainer_state.pt", weights_only=False)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return checkpoint_step(path)


def encode(tokenizer, conversations: list[list[dict]], completions: list[str], max_length: int,
           chat_template_kwargs: dict | None = None) -> dict:
    """Right-padded prompt+completion ids; loss_mask marks the completion and its end token."""
    rows, masks = [], []
    for conv, completion in zip(conversations, completions):
        prompt = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True,
                                               **(chat_template_kwargs or {}))
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = (p_ids + c_ids)[:max_length]
        rows.append(ids)
        masks.append(([0] * len(p_ids) + [1] * len(c_ids))[:max_length])
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
        "attention_mask": torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
        "loss_mask": torch.tensor([m + [0] * (width - len(m)) for m in masks]),
    }


def to_device(micro: dict, device) -> dict:
    return {k: v.to(device) for k, v in micro.items()}


def cross_entropy_sum(model, micro: dict) -> torch.Tensor:
    """Summed next-token cross-entropy over the completion tokens (SFT on the given sequences)."""
    logits = model(input_ids=micro["input_ids"], attention_mask=micro["attention_mask"]).logits[:, :-1]
    targets = micro["input_ids"][:, 1:]
    mask = micro["loss_mask"][:, 1:].bool()
    return torch.nn.functional.cross_entropy(logits[mask].float(), targets[mask], reduction="sum")


def split_micro(batch: dict, micro_batch: int) -> Batch:
    n = batch["input_ids"].shape[0]
    return [{k: v[i : i + micro_batch] for k, v in batch.items()} for i in range(0, n, micro_batch)]
