"""Supervised training on fixed token sequences, on transformers' Trainer: stage 0 and the forward-KL warmup.

Rows are {input_ids, labels}, labels -100 outside the completion. Cross-entropy (stage 0, and
forward KL with hard targets) is the model's own loss; soft forward KL replaces it with TRL's
chunked divergence kernel, computed inside the wrapped model's forward as TRL's
DistillationTrainer does, so DDP, DeepSpeed ZeRO-3 and FSDP see every parameter they shard,
and the (tokens x vocabulary) logits of the two models are never held at once.
"""

from __future__ import annotations

import torch
from transformers import Trainer
from trl.kernels.chunked_divergence import ChunkedDivergenceFunction
from trl.models.utils import _ForwardRedirection

from .common import DecayEveryParameter
from .sharding import Sharded, shard_frozen

IGNORE = -100
FORWARD, REVERSE = 0.0, 1.0  # TRL's beta: 0 = KL(teacher || student), 1 = KL(student || teacher)


def sequence_row(prompt_ids: list[int], completion_ids: list[int], max_length: int) -> dict:
    """One training row; the completion is trained on exactly as given (no end token is added)."""
    ids = (list(prompt_ids) + list(completion_ids))[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + list(completion_ids))[:max_length]
    return {"input_ids": ids, "labels": labels}


class PadCollator:
    """Right-pads rows {input_ids, labels} into a batch with an attention mask."""

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)

        def padded(key: str, fill: int) -> torch.Tensor:
            return torch.tensor([list(r[key]) + [fill] * (width - len(r[key])) for r in rows])

        ids = padded("input_ids", self.pad)
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "labels": padded("labels", IGNORE)}


def hidden_states(model, batch: dict) -> torch.Tensor:
    """The backbone's last hidden states (no lm_head: the divergence kernel projects them in chunks)."""
    backbone = getattr(model, model.base_model_prefix)
    return backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def _head(model) -> torch.Tensor:
    weight = model.get_output_embeddings().weight
    if isinstance(weight, torch.distributed.tensor.DTensor):  # FSDP2: gather the vocabulary once
        weight = weight.full_tensor()
    return weight


def divergence_sum(student, teacher, batch: dict, beta: float) -> torch.Tensor:
    """Summed per-token divergence between the two models at the label positions (next-token predictions)."""
    with torch.no_grad():
        teacher_hidden = hidden_states(teacher, batch)
    return _divergence(student, teacher, hidden_states(student, batch), teacher_hidden, batch, beta)


def _divergence(student, teacher, student_hidden, teacher_hidden, batch: dict, beta: float) -> torch.Tensor:
    positions = batch["labels"][:, 1:] != IGNORE
    h_s = student_hidden[:, :-1][positions]
    h_t = teacher_hidden[:, :-1][positions].to(h_s.dtype)
    per_token, _ = ChunkedDivergenceFunction.apply(
        h_s, _head(student).to(h_s.dtype), None, h_t, _head(teacher).to(h_s.dtype), None, beta)
    return per_token.sum()


@torch.no_grad()
def mean_divergence(student, teacher, batch: dict, beta: float) -> float:
    tokens = int((batch["labels"][:, 1:] != IGNORE).sum()) or 1
    return float(divergence_sum(student, teacher, batch, beta)) / tokens


class SupervisedTrainer(DecayEveryParameter, Sharded, Trainer):
    """transformers' Trainer with the authors' weight decay and FSDP2 settings; the loss is the model's own."""


class ForwardKLTrainer(SupervisedTrainer):
    """Trainer whose loss is KL(teacher || student) on the given sequences, token-mean over the global batch."""

    def __init__(self, *args, teacher, **kwargs):
        super().__init__(*args, **kwargs)
        self._redirect = _ForwardRedirection()
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            self.teacher = prepare_deepspeed(teacher, self.accelerator)
        elif self.is_fsdp_enabled:  # accelerate's evaluation-mode prepare neither places nor shards it
            self.teacher = shard_frozen(teacher, self.accelerator)
        else:
            self.teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        student = self.accelerator.unwrap_model(model)
        total = self._redirect(model, student, self._divergence_sum, student, inputs)
        if num_items_in_batch is None:
            loss = total / (inputs["labels"][:, 1:] != IGNORE).sum().clamp(min=1)
        else:
            # The token count is global; DDP averages gradients over processes, so scale back up.
            loss = total / num_items_in_batch * self.accelerator.num_processes
        return (loss, None) if return_outputs else loss

    def _divergence_sum(self, student, batch: dict) -> torch.Tensor:
        # Runs inside the student wrapper's forward; the teacher's backbone goes through its own wrapper.
        teacher = self.accelerator.unwrap_model(self.teacher)
        with torch.no_grad():
            teacher_hidden = self._redirect(self.teacher, teacher, hidden_states, teacher, batch)
        return _divergence(student, teacher, hidden_states(student, batch), teacher_hidden, batch, FORWARD)
