"""Stage 1 (the teacher's GRPO, Qwen3-8B) as `s2d plan` prices it, beside the same model applied to the authors'
verl run. One JSON object per line; docs/compute.md reads them.

    .venv/bin/python benchmarks/compute_figures.py

ours     the qwen3-8b-1.7b profile as shipped: TRL, colocated vLLM in a 0.3 share, micro-batches of 8 padded
         to their longest completion
authors  405 rollout batches x 4,096 responses on 8 GPUs, SGLang in a 0.7 share, verl's dynamic batching
         (packed sequences: no padding, modelled as micro-batches of 1); everything else as ours
Both at the plan's assumptions (H100-80GB, completions 0.3 x 8,192 tokens, the profile's utilisations).
"""

import json

from sparse2dense.config import load_grid, load_profile
from sparse2dense.planning import cost, dag

SETUPS = {
    "ours": {},
    "authors": {"generation.colocate_gpu_memory_utilization": 0.7, "grpo.micro_batch": 1},
}


def stage1(overrides: dict) -> dict:
    plan = dag.plan(load_profile("qwen3-8b-1.7b", overrides), load_grid("allocation"), ["teacher-grpo"])
    node = next(n for n in plan.nodes.values() if n.name == "teacher-grpo")
    c = cost.estimate(plan).nodes[node.key]
    return {"steps": dag.planned_steps(node), "gpus": c.gpus, "gpu_hours": c.gpu_hours,
            "sampling_gpu_hours": c.sampling_gpu_hours,
            "training_gpu_hours": round(c.gpu_hours - c.sampling_gpu_hours, 3), "in_flight_per_gpu": c.in_flight}


def main() -> None:
    for name, overrides in SETUPS.items():
        print(json.dumps({"figure": "stage1_gpu_hours", "setup": name, **stage1(overrides)}), flush=True)


if __name__ == "__main__":
    main()
