"""The toy results of docs/results-toy.md: every grid it quotes, then its tables and charts.

    make results-toy          # or: .venv/bin/python scripts/toy_results.py [--only NAME] [--profile P] [--seeds 0,1,2]

Runs (nodes already on disk are reused, so a rerun only redraws):
  main      the allocation grid on `toy`, `toy-mid-student` and `toy-strong-student`, seeds 0, 1, 2
  sweep     the budget-sweep grid on `toy` (or on each --profile), seeds 0, 1, 2
  stage3    Stage 3 against its replay control on `toy` with more held-out labels, more Stage 3 steps,
            and both, seeds 0, 1, 2
Writes docs/results-toy/<name>.{md,png} (tables as `s2d report` prints them, charts from the report),
claims-<profile>.md (each of the paper's claims as a paired difference over seeds) and prints them.
Uses the usual locations ($S2D_ARTIFACTS, $MLFLOW_TRACKING_URI).
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from sparse2dense.config import load_grid, load_profile
from sparse2dense.locations import artifacts_root
from sparse2dense.planning import comparison, dag

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "results-toy"
PROFILES = ("toy", "toy-mid-student", "toy-strong-student")
# Stage 3 variants: (name, what changes in the toy profile)
STAGE3 = {"more-heldout": {"data": {"heldout_budget": 1000}},
          "more-steps": {"student_grpo": {"steps": 300}},
          "both": {"data": {"heldout_budget": 1000}, "student_grpo": {"steps": 300}}}
# The paper's claims as (claim, the arm it puts above, the arm it puts below), read seed by seed
CLAIMS = (("GRPO improves the teacher", "teacher-grpo", "teacher-base"),
          ("RL'd-teacher transfer (the bridge) beats direct GRPO", "bridge", "direct-grpo"),
          ("direct GRPO beats raw-teacher transfer", "direct-grpo", "raw-teacher-bridge"),
          ("RL'd-teacher transfer beats raw-teacher transfer", "bridge", "raw-teacher-bridge"),
          ("forward KL matters: the bridge beats OPD alone", "bridge", "opd-only"),
          ("OPD matters: the bridge beats forward KL alone", "bridge", "fkl-only"),
          ("Stage 3 beats its replay control", "bridge+grpo", "bridge+replay"))


def grid(profile: str, grid_name: str, seeds: str, arms: str | None = None) -> None:
    command = [sys.executable, "-m", "sparse2dense.cli", "grid", "--profile", profile, "--grid", grid_name,
               "--seeds", seeds] + (["--arms", arms] if arms else [])
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def table(profile: str, grid_name: str, seeds: list[int], arms: list[str] | None = None) -> list[dict]:
    plan = dag.plan(load_profile(profile), load_grid(grid_name), arms, seeds)
    return comparison.rows(plan, artifacts_root())


def write(name: str, rows: list[dict], title: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.md").write_text(comparison.markdown(rows))
    comparison.chart(rows, OUT / f"{name}.png", title)
    print(f"\n## {name}: {title}\n\n{comparison.markdown(rows)}", flush=True)


def verdict(mean: float, sem: float) -> str:
    """Two standard errors of the paired difference either side of zero, or neither."""
    if mean - 2 * sem > 0:
        return "yes"
    if mean + 2 * sem < 0:
        return "**no**: reversed"
    return "not resolved"


def claims(profile: str, rows: list[dict]) -> None:
    """Each claim's paired difference over seeds (base models included with `seed_scope: all`)."""
    metric = comparison.headline_metric(rows)
    lines = [f"| claim | above − below | per seed | mean ± s.e. | holds on `{profile}`? |", "|---|---|---|---|---|"]
    for claim, above, below in CLAIMS:
        pair = comparison.paired(rows, above, below, metric)
        if not pair["seeds"]:
            continue
        per_seed = ", ".join(f"{100 * d:+.1f}" for d in pair["differences"])
        mean, sem = 100 * pair["mean"], 100 * pair["sem"]
        lines.append(f"| {claim} | {above} − {below} | {per_seed} | {mean:+.1f} ± {sem:.1f} | {verdict(mean, sem)} |")
    text = "\n".join(lines) + "\n"
    (OUT / f"claims-{profile}.md").write_text(text)
    print(f"\n## claims on {profile} ({metric}, paired by seed)\n\n{text}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["main", "sweep", "stage3"], action="append")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--profile", choices=PROFILES, action="append", help="main and sweep: these profiles only")
    args = parser.parse_args()
    profiles = args.profile or PROFILES
    swept = args.profile or ("toy",)
    only = set(args.only or ["main", "sweep", "stage3"])
    seeds = [int(s) for s in args.seeds.split(",")]
    if "main" in only:
        for profile in profiles:
            grid(profile, "allocation", args.seeds)
            rows = table(profile, "allocation", seeds)
            write(f"allocation-{profile}", rows, f"{profile}: the allocation grid, seeds {args.seeds}")
            claims(profile, rows)
    if "sweep" in only:
        for profile in swept:
            grid(profile, "budget-sweep", args.seeds)
            write(f"budget-sweep-{profile}", table(profile, "budget-sweep", seeds),
                  f"{profile}: accuracy against labels spent, seeds {args.seeds}")
    if "stage3" in only:
        arms = "bridge+grpo,bridge+replay"
        with tempfile.TemporaryDirectory() as folder:
            for name, change in STAGE3.items():
                path = Path(folder) / f"toy-stage3-{name}.yaml"
                path.write_text(yaml.safe_dump({"extends": "toy", "name": "toy", **change}))
                grid(str(path), "allocation", args.seeds, arms)
                write(f"stage3-{name}", table(str(path), "allocation", seeds, arms.split(",")),
                      f"toy, Stage 3 against replay: {name}, seeds {args.seeds}")


if __name__ == "__main__":
    main()
