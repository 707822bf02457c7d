"""Sampling completions: one interface, a transformers backend (CPU or GPU) and a vLLM one (GPU).

vLLM is imported only when chosen; `auto` takes it where it is installed and a GPU is present.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import GenerationSpec, HardwareSpec, SamplingSpec
from .models import device_for, load_model, load_tokenizer


@dataclass(frozen=True)
class Sample:
    text: str
    num_tokens: int


def resolve_backend(spec: GenerationSpec, hardware: HardwareSpec) -> str:
    if spec.backend != "auto":
        return spec.backend
    has_vllm = importlib.util.find_spec("vllm") is not None
    return "vllm" if has_vllm and device_for(hardware) == "cuda" else "transformers"


class TransformersGenerator:
    """Batched `model.generate` with left padding; works on an in-memory model too."""

    def __init__(self, model, tokenizer, batch_size: int = 64, chat_template_kwargs: dict | None = None):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.chat_template_kwargs = chat_template_kwargs or {}

    @classmethod
    def from_path(cls, path, spec: GenerationSpec, hardware: HardwareSpec, chat_template_kwargs=None):
        return cls(load_model(path, hardware), load_tokenizer(path), spec.batch_size, chat_template_kwargs)

    @torch.no_grad()
    def generate(self, conversations: list[list[dict]], sampling: SamplingSpec, n: int = 1, seed: int = 0):
        torch.manual_seed(seed)
        was_training = self.model.training
        self.model.eval()
        prompts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True,
                                                      **self.chat_template_kwargs) for c in conversations]
        per_batch = max(1, self.batch_size // n)
        out: list[list[Sample]] = []
        for i in range(0, len(prompts), per_batch):
            out.extend(self._batch(prompts[i : i + per_batch], sampling, n))
        self.model.train(was_training)
        return out

    def _batch(self, prompts: list[str], sampling: SamplingSpec, n: int) -> list[list[Sample]]:
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(self.model.device)
        greedy = sampling.temperature == 0
        kwargs = {} if greedy else {"temperature": sampling.temperature, "top_p": sampling.top_p,
                                    "top_k": sampling.top_k or None}
        ids = self.model.generate(
            **enc, do_sample=not greedy, num_return_sequences=n, max_new_tokens=sampling.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id, **kwargs,
        )[:, enc["input_ids"].shape[1] :]
        samples = [self._sample(row) for row in ids]
        return [samples[j * n : (j + 1) * n] for j in range(len(prompts))]

    def _sample(self, row: torch.Tensor) -> Sample:
        # Tokens up to and including the first end-of-sequence; padding after it is not generated.
        ends = (row == self.tokenizer.eos_token_id).nonzero()
        length = int(ends[0]) + 1 if len(ends) else int((row != self.tokenizer.pad_token_id).sum())
        return Sample(self.tokenizer.decode(row[:length], skip_special_tokens=True), length)


class VLLMGenerator:
    """vLLM offline engine; tensor parallel across the GPUs the profile gives it."""

    def __init__(self, path, spec: GenerationSpec, hardware: HardwareSpec, chat_template_kwargs=None):
        from vllm import LLM

        self.llm = LLM(model=str(path), tensor_parallel_size=spec.tensor_parallel_size,
                       gpu_memory_utilization=spec.gpu_memory_utilization,
                       dtype="bfloat16" if hardware.precision == "bf16" else "float32")
        self.chat_template_kwargs = chat_template_kwargs or {}

    def generate(self, conversations: list[list[dict]], sampling: SamplingSpec, n: int = 1, seed: int = 0):
        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                top_k=sampling.top_k or -1, max_tokens=sampling.max_new_tokens, seed=seed)
        outputs = self.llm.chat(conversations, params, use_tqdm=False,
                                chat_template_kwargs=self.chat_template_kwargs)
        return [[Sample(o.text, len(o.token_ids)) for o in out.outputs] for out in outputs]

    def close(self) -> None:
        del self.llm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def make_generator(path: str | Path, spec: GenerationSpec, hardware: HardwareSpec, chat_template_kwargs=None):
    if resolve_backend(spec, hardware) == "vllm":
        return VLLMGenerator(path, spec, hardware, chat_template_kwargs)
    return TransformersGenerator.from_path(path, spec, hardware, chat_template_kwargs)
