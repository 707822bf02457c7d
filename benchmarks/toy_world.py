"""Toy-world figures: stage-0 accuracy and build time of both models, then the teacher's GRPO lift.

    .venv/bin/python benchmarks/toy_world.py [--profile toy] [--out /tmp/toy-world]

Prints one JSON object: greedy accuracy on the toy test set (600 problems) of the stage-0
teacher and student, their build times, and the teacher's accuracy after `grpo.steps` of GRPO.
"""

import argparse
import json
import time
from pathlib import Path

from sparse2dense import data
from sparse2dense.config import load_profile
from sparse2dense.generation import TransformersGenerator
from sparse2dense.models import load_model, load_tokenizer
from sparse2dense.stages.base import accuracy, prepare_base
from sparse2dense.stages.grpo import grpo


def test_accuracy(profile, model_dir) -> float:
    test = data.benchmark(profile.data.benchmarks[0], profile.data).rows
    generator = TransformersGenerator(load_model(model_dir, profile.hardware), load_tokenizer(model_dir), 256)
    return accuracy(generator, test, profile)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="toy")
    parser.add_argument("--out", default="/tmp/toy-world")
    args = parser.parse_args()
    profile, out = load_profile(args.profile), Path(args.out)
    figures: dict[str, float] = {}
    for role in ("teacher", "student"):
        base = prepare_base(profile, role, out / role)
        figures[f"{role}_build_s"] = base["compute_s"]
        figures[f"{role}_stage0_steps"] = base["metrics"]["steps"]
        figures[f"{role}_test_accuracy"] = test_accuracy(profile, base["outputs"]["model"])
    start = time.perf_counter()
    tuned = grpo(profile, profile.grpo, base_dir(out, "teacher"), data.splits(profile.data)["labeled"],
                 out / "teacher-grpo", seed=0)
    figures["teacher_grpo_s"] = time.perf_counter() - start
    figures["teacher_grpo_steps"] = tuned["metrics"]["steps"]
    figures["teacher_grpo_test_accuracy"] = test_accuracy(profile, tuned["outputs"]["model"])
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}, indent=2))


def base_dir(out: Path, role: str) -> str:
    return str(out / role / "model")


if __name__ == "__main__":
    main()
