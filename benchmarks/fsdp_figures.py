"""One OPD node under FSDP2 on 1 and on 2 CPU processes: wall time and the main rank's peak memory.

    .venv/bin/python benchmarks/fsdp_figures.py [--out DIR]

Runs the hub-smoke-fsdp grid's opd-only arm offline (the hub-smoke stand-ins are built into DIR first),
then recomputes its OPD node with `resources.opd.processes` 2 and 1 (one process on a CPU is unsharded:
FSDP needs a process group there). One JSON object per line:
node_compute_s is the node's own compute time (inside its launched processes), node_wall_s the whole
`s2d grid --refresh` command, peak_rss_mib the main rank's peak resident memory, and the local fractions
what each rank held of the student and the teacher.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from sparse2dense import hub_smoke


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    work = (args.out or Path(tempfile.mkdtemp(prefix="s2d-fsdp-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = hub_smoke.offline_env(work)

    def run(*argv: str) -> float:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *argv], cwd=work, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit((done.stdout + done.stderr)[-4000:])
        return time.perf_counter() - start

    run("-m", "sparse2dense.hub_smoke")
    run("-m", "sparse2dense.cli", "grid", "--profile", "hub-smoke-fsdp", "--arms", "opd-only")  # the inputs, once
    for processes in (2, 1):
        profile = work / f"fsdp-opd-{processes}.yaml"
        profile.write_text(yaml.safe_dump({"extends": "hub-smoke-fsdp", "name": "hub-smoke-fsdp",
                                           "resources": {"opd": {"processes": processes}}}))
        wall = run("-m", "sparse2dense.cli", "grid", "--profile", str(profile), "--arms", "opd-only",
                   "--refresh", "opd")
        [manifest] = [json.loads(p.read_text()) for p in (work / "artifacts" / "opd").glob("*/manifest.json")]
        placement = manifest["placement"]
        print(json.dumps({"figure": "opd_fsdp2_cpu", "processes": processes, "world_size": manifest["world_size"],
                          "node_compute_s": manifest["compute_s"], "node_wall_s": round(wall, 1),
                          "peak_rss_mib": placement["peak_rss_mib"],
                          "student_local_fraction": placement["student_local_fraction"],
                          "teacher_local_fraction": placement.get("teacher_local_fraction"),
                          "steps": manifest["metrics"].get("steps")}), flush=True)


if __name__ == "__main__":
    main()
