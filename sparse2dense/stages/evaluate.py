"""Evaluation: avg@n and pass@k per benchmark, response lengths, and every sample saved for audit."""

from __future__ import annotations

from math import comb
from pathlib import Path

from ..config import BenchmarkSpec, EvaluateSpec, Profile
from ..data import problems
from ..data.verify import is_correct
from ..generation import open_generator
from ..models import set_threads
from .common import result, stopwatch, write_jsonl


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def score(samples: list[list], golds: list[str], pass_at: list[int], checker: str = "math-verify"):
    """Metrics for one benchmark from its samples (lists of Sample per problem), and each sample's verdict."""
    correct = [[is_correct(s.text, g, checker) for s in group] for group, g in zip(samples, golds)]
    n = len(samples[0])
    lengths = [s.num_tokens for group in samples for s in group]
    metrics = {f"avg@{n}": sum(map(sum, correct)) / (n * len(correct))}
    for k in pass_at:
        metrics[f"pass@{k}"] = sum(pass_at_k(n, sum(c), k) for c in correct) / len(correct)
    metrics["mean_response_tokens"] = sum(lengths) / len(lengths)
    metrics["tokens_generated"] = sum(lengths)
    metrics["truncated_fraction"] = sum(s.truncated for group in samples for s in group) / len(lengths)
    return metrics, correct


def evaluate(profile: Profile, spec: EvaluateSpec, benchmarks: list[BenchmarkSpec], model_path: str, out: Path,
             seed: int) -> dict:
    """Sample `samples` completions per problem on every benchmark."""
    set_threads(profile.hardware)
    metrics: dict[str, float] = {}
    benchmarks_read: dict[str, dict] = {}
    splits = {bench.name: problems.benchmark(bench, profile.data) for bench in benchmarks}
    convs = {name: [problems.messages(r["problem"], profile.data) for r in split.rows]
             for name, split in splits.items()}
    with stopwatch() as clock, open_generator(model_path, profile, seed, [c for cs in convs.values() for c in cs],
                                              spec.max_new_tokens) as generator:
        for name, split in splits.items():
            samples = generator.generate(convs[name], spec, n=spec.samples)
            scores, correct = score(samples, [r["answer"] for r in split.rows], spec.pass_at, profile.data.checker)
            metrics.update({f"{name}/{k}": v for k, v in scores.items()})
            benchmarks_read[name] = split.describe()
            write_jsonl(out / f"samples-{name}.jsonl", (
                {"id": r["id"], "prompt": c, "answer": r["answer"], "completions": [s.text for s in group],
                 "num_tokens": [s.num_tokens for s in group], "truncated": [s.truncated for s in group],
                 "correct": ok}
                for r, c, group, ok in zip(split.rows, convs[name], samples, correct)))
        backend = generator.describe()
    return result(compute_s=clock["seconds"], metrics=metrics, samples=out) | {"benchmarks": benchmarks_read,
                                                                              "generation": backend}
