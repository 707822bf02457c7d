"""How the generators are seeded. The grid's environment has no vLLM, so its test here records what our code
hands vLLM's API (a recording `vllm` module in its place); test_vllm runs the engine in the node runtime."""

import sys
import types

import torch

from sparse2dense.config import GenerationSpec, HardwareSpec, SamplingSpec
from sparse2dense.generation import TransformersGenerator, VLLMGenerator
from sparse2dense.models import load_model, load_tokenizer


def test_vllm_seeds_each_request_from_the_engines_seed(monkeypatch, bases):
    """How vLLM's core batches requests decides which draws an engine seed gives each: every request carries a
    seed of its own, drawn in order from the node's (tests/test_vllm.py checks the samples on vLLM itself)."""
    calls = []

    class LLM:
        def __init__(self, **kwargs):
            calls.append(kwargs)

        def chat(self, conversations, params, **kwargs):
            calls.append(params)
            return []

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "vllm", fake)

    def seeds(seed: int) -> list[int]:
        generator = VLLMGenerator(bases["student"], GenerationSpec(), HardwareSpec(device="cuda"), seed=seed)
        generator.generate([[{"role": "user", "content": f"{i}+1"}] for i in range(3)], SamplingSpec(max_new_tokens=4),
                           n=2)
        engine, requests = calls[-2:]
        assert engine["seed"] == seed and [r["n"] for r in requests] == [2, 2, 2]
        return [r["seed"] for r in requests]

    assert seeds(7) == seeds(7) != seeds(8)
    assert len(set(seeds(7))) == 3


def test_transformers_generator_draws_the_same_samples_from_the_same_seed(bases):
    model_dir = bases["student"]
    model = load_model(model_dir, HardwareSpec(device="cpu"), trainable=False)
    tokenizer = load_tokenizer(model_dir)
    convs = [[{"role": "user", "content": "12+7"}]] * 3
    sampling = SamplingSpec(temperature=1.0, max_new_tokens=8)

    def draw(seed: int):
        torch.manual_seed(1234)  # what the global generator held before must not matter
        return [s.token_ids for group in TransformersGenerator(model, tokenizer, seed=seed).generate(convs, sampling, 2)
                for s in group]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
