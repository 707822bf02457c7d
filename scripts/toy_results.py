"""The toy results of docs/results-toy.md: every grid it quotes, then its tables and charts.

    make results-toy          # or: .venv/bin/python scripts/toy_results.py [--only NAME] [--profile P] [--seeds 0,1,2]

Runs (nodes already on disk are reused, so a rerun only redraws):
  main      the allocation grid on `toy` and on `toy-strong-student`, seeds 0, 1, 2
  sweep     the budget-sweep grid on both profiles, seed 0
  stage3    Stage 3 against its replay control on `toy` with more held-out labels, more Stage 3 steps,
            and both, seeds 0, 1, 2
Writes docs/results-toy/<name>.{md,png} (tables as `s2d report` prints them, charts from the report)
and prints the tables. Uses the usual locations ($S2D_ARTIFACTS, $MLFLOW_TRACKING_URI).
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from sparse2dense import dag, report
from sparse2dense.config import load_grid, load_profile
from sparse2dense.locations import artifacts_root

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "results-toy"
PROFILES = ("toy", "toy-strong-student")
# Stage 3 variants: (name, what changes in the toy profile)
STAGE3 = {"more-heldout": {"data": {"heldout_budget": 1000}},
          "more-steps": {"student_grpo": {"steps": 300}},
          "both": {"data": {"heldout_budget": 1000}, "student_grpo": {"steps": 300}}}


def grid(profile: str, grid_name: str, seeds: str, arms: str | None = None) -> None:
    command = [sys.executable, "-m", "sparse2dense.cli", "grid", "--profile", profile, "--grid", grid_name,
               "--seeds", seeds] + (["--arms", arms] if arms else [])
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def table(profile: str, grid_name: str, seeds: list[int], arms: list[str] | None = None) -> list[dict]:
    plan = dag.plan(load_profile(profile), load_grid(grid_name), arms, seeds)
    return report.rows(plan, artifacts_root())


def write(name: str, rows: list[dict], title: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.md").write_text(report.markdown(rows))
    report.chart(rows, OUT / f"{name}.png", title)
    print(f"\n## {name}: {title}\n\n{report.markdown(rows)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["main", "sweep", "stage3"], action="append")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--profile", choices=PROFILES, action="append", help="main and sweep: these profiles only")
    args = parser.parse_args()
    profiles = args.profile or PROFILES
    only = set(args.only or ["main", "sweep", "stage3"])
    seeds = [int(s) for s in args.seeds.split(",")]
    if "main" in only:
        for profile in profiles:
            grid(profile, "allocation", args.seeds)
            write(f"allocation-{profile}", table(profile, "allocation", seeds),
                  f"{profile}: the allocation grid, seeds {args.seeds}")
    if "sweep" in only:
        for profile in profiles:
            grid(profile, "budget-sweep", "0")
            write(f"budget-sweep-{profile}", table(profile, "budget-sweep", [0]),
                  f"{profile}: accuracy against labels spent, seed 0")
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
