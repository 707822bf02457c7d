"""How the generators are seeded. The grid's environment has no vLLM, so its test here records what our code
hands vLLM's API (a recording `vllm` module in its place); test_vllm runs the engine in the node runtime."""

import sys
import types

import torch

from sparse2dense.config import GenerationSpec, HardwareSpec, SamplingSpec
from sparse2dense.generation import TransformersGenerator, VLLMGenerator
from sparse2dense.models import load_model, load_tokenizer


def test_vllm_seeds_its_engine_and_no_request(monkeypatch, bases):
    """A per-request seed puts vLLM's sampler on its slower seeded path; the engine's seed covers every request."""
    calls = {}

    class LLM:
        def __init__(self, **kwargs):
            calls["engine"] = kwargs

        def chat(self, conversations, params, **kwargs):
            calls["request"] = params
            return []

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, lambda **kwargs: kwargs
    monkeypatch.setitem(sys.modules, "vllm", fake)
    generator = VLLMGenerator(bases["student"], GenerationSpec(), HardwareSpec(device="cuda"), seed=7)
    generator.generate([[{"role": "user", "content": "1+1"}]], SamplingSpec(max_new_tokens=4), n=2)
    assert calls["engine"]["seed"] == 7
    assert "seed" not in calls["request"] and calls["request"]["n"] == 2


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
