"""Per-stage figures on the toy profile: wall time, peak memory, tokens per second. One JSON object per line.

    .venv/bin/python benchmarks/stage_figures.py [--profile toy] [--out DIR]

Each stage runs in a fresh process (its peak resident memory is its own): stage 0 for the teacher, then
GRPO, teacher rollouts, forward KL, OPD and an evaluation, chained as in the grid. Tokens per second
counts the tokens a stage processed: sampled ones for rollouts and evaluation, trained ones (prompt and
completion) for the trainers.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("base", "grpo", "rollouts", "forward_kl", "opd", "evaluate")


def run_one(stage: str, profile_name: str, out: Path) -> dict:
    """In this (fresh) process: run `stage`, return its figures."""
    from sparse2dense.config import load_profile
    from sparse2dense.data import problems
    from sparse2dense.stages.base import prepare_base
    from sparse2dense.stages.distill import forward_kl, opd
    from sparse2dense.stages.evaluate import evaluate
    from sparse2dense.stages.grpo import grpo
    from sparse2dense.stages.rollouts import rollouts

    p = load_profile(profile_name)
    teacher, student = str(out / "base" / "model"), str(out / "student" / "model")
    start = time.perf_counter()
    if stage == "base":
        result = prepare_base(p, "teacher", p.models.teacher, out / "base", p.seed)
        prepare_base(p, "student", p.models.student, out / "student", p.seed)  # for the stages below; not timed
        wall = result["compute_s"]
    else:
        result = {
            "grpo": lambda: grpo(p, p.grpo, teacher, problems.split(p.data, "labeled"), out / "grpo", 0),
            "rollouts": lambda: rollouts(p, p.rollouts, teacher, problems.split(p.data, "distill"), out / "rollouts",
                                         0),
            "forward_kl": lambda: forward_kl(p, p.forward_kl, student, out / "rollouts", out / "forward_kl", 0),
            "opd": lambda: opd(p, p.opd, teacher, student, problems.split(p.data, "distill"), out / "opd", 0),
            "evaluate": lambda: evaluate(p, p.evaluate, p.data.benchmarks, teacher, out / "evaluate", 0),
        }[stage]()
        wall = time.perf_counter() - start
    tokens = processed_tokens(stage, result, out, p.forward_kl.epochs)
    return {"stage": stage, "profile": profile_name, "wall_s": round(wall, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "tokens": tokens, "tokens_per_s": round(tokens / wall, 1) if tokens else None}


def processed_tokens(stage: str, result: dict, out: Path, fkl_epochs: int) -> int | None:
    metrics = result["metrics"]
    if stage in ("rollouts", "evaluate"):
        return int(sum(v for k, v in metrics.items() if k.endswith("tokens_generated")))
    history = out / stage / "log_history.json"
    if stage in ("grpo", "opd") and history.exists():
        seen = [h["num_tokens"] for h in json.loads(history.read_text()) if "num_tokens" in h]
        return int(seen[-1]) if seen else None
    if stage == "forward_kl":
        rows = [json.loads(line) for line in (out / "rollouts" / "rollouts.jsonl").open()]
        return sum(len(r["prompt_ids"]) + len(r["completion_ids"]) for r in rows) * fkl_epochs
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="toy")
    parser.add_argument("--out", default=None)
    parser.add_argument("--one", choices=STAGES, help=argparse.SUPPRESS)  # the child's stage
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="stage-figures-"))
    if args.one:
        print(json.dumps(run_one(args.one, args.profile, out)), flush=True)
        return
    for stage in STAGES:
        done = subprocess.run([sys.executable, __file__, "--one", stage, "--profile", args.profile, "--out", str(out)],
                              capture_output=True, text=True, check=True)
        print(done.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
