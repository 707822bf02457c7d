"""Base models: hub models are used as they are; toy models are built and pretrained ("stage 0").

Stage 0 trains on generated worked solutions and stops at a dev-set accuracy target rather
than a step count: toy accuracy jumps abruptly, so a fixed step count lands anywhere.
"""

from __future__ import annotations

from pathlib import Path

from .. import data, toy_task
from ..config import Profile, SamplingSpec
from ..generation import TransformersGenerator
from ..models import build_toy_model, build_toy_tokenizer, device_for, save_model, set_threads
from ..verify import is_correct
from . import loop
from .common import MODEL_DIR, result, stopwatch

_DEV_SEED, _TRAIN_SEED = 3_000, 4_000
_GREEDY = SamplingSpec(temperature=0, max_new_tokens=64)


def prepare_base(profile: Profile, role: str, out: Path, on_log=None) -> dict:
    """The base teacher or student (`role`), ready for the stages that start from it."""
    spec = getattr(profile.models, role)
    if spec.source == "hub":
        return result(model=spec.name, compute_s=0.0)
    set_threads(profile.hardware)
    with stopwatch() as clock:
        tokenizer = build_toy_tokenizer()
        seed = profile.seed + (0 if role == "teacher" else 1)
        model = build_toy_model(spec.arch, tokenizer, seed).to(device_for(profile.hardware))
        dev, taboo = _dev_set(profile)
        generator = TransformersGenerator(model, tokenizer, batch_size=256)
        history: list[float] = []

        def dev_accuracy_reached(step: int) -> bool:
            history.append(accuracy(generator, dev, profile))
            if on_log:
                on_log(step, {"dev_accuracy": history[-1]})
            return history[-1] >= spec.pretrain.target_accuracy

        def batch_at(step: int):
            rows = toy_task.generate(profile.data.toy, spec.pretrain.batch_size,
                                     seed=_TRAIN_SEED + 7919 * seed + step, exclude=taboo)
            convs = [data.messages(r["problem"], profile.data) for r in rows]
            enc = loop.encode(tokenizer, convs, [r["solution"] for r in rows], max_length=128)
            return [loop.to_device(enc, model.device)]

        run = loop.train(model, spec.pretrain, spec.pretrain.max_steps, batch_at, loop.cross_entropy_sum, out,
                         on_log=on_log, should_stop=dev_accuracy_reached, check_every=spec.pretrain.eval_every)
        final = accuracy(generator, dev, profile)
        save_model(model, tokenizer, out / MODEL_DIR)
    return result(model=out / MODEL_DIR, compute_s=clock["seconds"], resumed_from_step=run.resumed_from_step,
                  metrics={"dev_accuracy": final, "steps": run.steps, "params": model.num_parameters()})


def _dev_set(profile: Profile) -> tuple[list[dict], set[str]]:
    """The dev set, and every problem stage 0 must not train on (dev and benchmarks)."""
    toy = profile.data.toy
    bench = [r["problem"] for b in profile.data.benchmarks for r in data.benchmark(b, profile.data).rows]
    spec = profile.models.teacher.pretrain
    dev = toy_task.generate(toy, spec.dev_size, seed=_DEV_SEED + profile.seed, exclude=set(bench))
    return dev, set(bench) | {r["problem"] for r in dev}


def accuracy(generator, rows: list[dict], profile: Profile) -> float:
    """Greedy accuracy on rows {problem, answer}."""
    convs = [data.messages(r["problem"], profile.data) for r in rows]
    samples = generator.generate(convs, _GREEDY, n=1)
    return sum(is_correct(s[0].text, r["answer"]) for s, r in zip(samples, rows)) / len(rows)
