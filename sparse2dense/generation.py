"""Sampling completions: one interface, a transformers backend and a vLLM one (its GPU or its CPU build).

vLLM is imported only when chosen; `auto` takes it where it is installed and a GPU is present.
Every sample keeps its token ids and whether it was cut off at the length limit, so training on
it never re-tokenizes text or invents an end token the model did not produce.
"""

from __future__ import annotations

import gc
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import GenerationSpec, HardwareSpec, Profile, SamplingSpec
from .models import device_for, end_token_ids, load_model, load_tokenizer, longest_prompt


@dataclass(frozen=True)
class Sample:
    text: str
    token_ids: tuple[int, ...]  # the completion, with its end token when it ended
    prompt_ids: tuple[int, ...]
    truncated: bool  # stopped by max_new_tokens, not by an end token

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def resolve_backend(spec: GenerationSpec, hardware: HardwareSpec, colocated: bool = False) -> str:
    """The backend a standalone sampler uses (`colocated`: GRPO's and OPD's trainer) on this machine."""
    backend = spec.configured(colocated)
    if backend != "auto":
        return backend
    has_vllm = importlib.util.find_spec("vllm") is not None
    return "vllm" if has_vllm and device_for(hardware) == "cuda" else "transformers"


class TransformersGenerator:
    """Batched `model.generate` with left padding; works on an in-memory model too. Each call samples from
    `seed` afresh."""

    def __init__(self, model, tokenizer, batch_size: int = 64, chat_template_kwargs: dict | None = None,
                 seed: int = 0):
        self.model, self.tokenizer, self.batch_size, self.seed = model, tokenizer, batch_size, seed
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.end_ids = end_token_ids(model, tokenizer)

    @torch.no_grad()
    def generate(self, conversations: list[list[dict]], sampling: SamplingSpec, n: int = 1):
        torch.manual_seed(self.seed)  # generate() takes no generator: sampling draws from the global one
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
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.end_ids, **kwargs,
        )[:, enc["input_ids"].shape[1] :]
        prompt_ids = [tuple(row[mask.bool()].tolist()) for row, mask in zip(enc["input_ids"], enc["attention_mask"])]
        samples = [self._sample(row, prompt_ids[j // n]) for j, row in enumerate(ids)]
        return [samples[j * n : (j + 1) * n] for j in range(len(prompts))]

    def _sample(self, row: torch.Tensor, prompt_ids: tuple[int, ...]) -> Sample:
        # Tokens up to and including the first end token; what follows is padding, not generated text.
        ends = torch.isin(row, torch.tensor(self.end_ids, device=row.device)).nonzero()
        length = int(ends[0]) + 1 if len(ends) else len(row)
        tokens = row[:length].tolist()
        return Sample(self.tokenizer.decode(tokens, skip_special_tokens=True), tuple(tokens), prompt_ids,
                      truncated=not len(ends))

    def describe(self) -> dict:
        return {"backend": "transformers"}

    def close(self) -> None:
        self.model = None
        gc.collect()


class VLLMGenerator:
    """vLLM offline engine; tensor parallel across the GPUs the profile gives it. Close it to free the GPU.

    Each request has a seed, drawn from the engine's: the engine's RNG alone gives samples that depend on how its
    core happened to batch the requests (they reach its process one by one), so two runs of a node could differ.
    The price is vLLM's native top-k/top-p sampler in place of FlashInfer's. A node samples in one order, so one
    engine's second call draws on from where its first stopped.
    It stops on every end token the transformers backend stops on (the checkpoint's list and the tokenizer's).
    On a CPU, `gpu_memory_utilization` is the share of the machine's memory vLLM reserves, and the engine runs
    eagerly: compiling its graphs doubles a start-up (about 67 s against 33 s) that the toy nodes never win back.
    """

    def __init__(self, path, spec: GenerationSpec, hardware: HardwareSpec, chat_template_kwargs=None,
                 trust_remote_code: bool = False, seed: int = 0, context: int | None = None):
        from transformers import GenerationConfig
        from vllm import LLM

        self.llm = LLM(model=str(path), tensor_parallel_size=spec.tensor_parallel_size, seed=seed,
                       gpu_memory_utilization=spec.gpu_memory_utilization, trust_remote_code=trust_remote_code,
                       dtype="bfloat16" if hardware.precision == "bf16" else "float32", max_model_len=context,
                       enforce_eager=device_for(hardware) == "cpu")
        self.chat_template_kwargs = chat_template_kwargs or {}
        self.seeds = random.Random(seed)
        tokenizer = load_tokenizer(path, trust_remote_code)
        self.end_ids = end_token_ids(GenerationConfig.from_pretrained(str(path)), tokenizer)

    def generate(self, conversations: list[list[dict]], sampling: SamplingSpec, n: int = 1):
        from vllm import SamplingParams

        # vLLM seeds a request's i-th of n samples with seed + i: requests' seeds are 31-bit draws, apart.
        params = [SamplingParams(n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                                 top_k=sampling.top_k or -1, max_tokens=sampling.max_new_tokens,
                                 stop_token_ids=self.end_ids, seed=self.seeds.getrandbits(31))
                  for _ in conversations]
        outputs = self.llm.chat(conversations, params, use_tqdm=False,
                                chat_template_kwargs=self.chat_template_kwargs)
        return [[Sample(o.text, tuple(o.token_ids), tuple(out.prompt_token_ids), o.finish_reason == "length")
                 for o in out.outputs] for out in outputs]

    def describe(self) -> dict:
        import vllm

        return {"backend": "vllm", "vllm": vllm.__version__}

    def close(self) -> None:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        # The engine core runs in processes of its own; dropping the LLM leaves them to a finalizer.
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        destroy_model_parallel()
        destroy_distributed_environment()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class open_generator:
    """`with open_generator(path, profile, seed, prompts, max_new_tokens) as gen:` the profile's backend, closed
    (GPU memory freed) on exit. A vLLM engine's context is bounded to the longest prompt plus `max_new_tokens`:
    left unset, vLLM sizes one sequence's KV cache for the model's own context (40,960 tokens for Qwen3)."""

    def __init__(self, path: str | Path, profile: Profile, seed: int, prompts: list[list[dict]] = (),
                 max_new_tokens: int = 0):
        trust = profile.models.trust_remote_code
        kwargs = profile.data.chat_template_kwargs
        if resolve_backend(profile.generation, profile.hardware) == "vllm":
            context = longest_prompt(load_tokenizer(path, trust), prompts, kwargs) + max_new_tokens if prompts else None
            self.generator = VLLMGenerator(path, profile.generation, profile.hardware, kwargs, trust, seed, context)
        else:
            model = load_model(path, profile.hardware, trainable=False, trust_remote_code=trust)
            self.generator = TransformersGenerator(model, load_tokenizer(path, trust), profile.generation.batch_size,
                                                   kwargs, seed)

    def __enter__(self):
        return self.generator

    def __exit__(self, *exc) -> None:
        self.generator.close()
