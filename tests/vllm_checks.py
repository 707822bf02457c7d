"""Run under the node runtime (`.venv-node/bin/python tests/vllm_checks.py MODEL PROMPTS.json`) by test_vllm.py.

Samples the prompts through the project's VLLMGenerator on vLLM's CPU build: greedily, then at temperature 1
from two engines with the same seed (the second in two calls), closing each engine as a node does; prints one
JSON object with the token ids, the truncation flags, and the child processes and resident memory before, during
and after each engine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(model: str, prompts_file: str) -> None:
    import psutil

    from sparse2dense.config import GenerationSpec, HardwareSpec, SamplingSpec
    from sparse2dense.generation import VLLMGenerator

    job = json.loads(Path(prompts_file).read_text())
    spec = GenerationSpec(backend="vllm", gpu_memory_utilization=0.05)
    hardware = HardwareSpec(device="cpu", precision="fp32")
    def processes() -> dict:
        """Live child processes (an exited, not yet reaped one is gone), how many are vLLM's engine's, and the
        resident memory of this process and its children (the machine's free memory moves with other jobs)."""
        me = psutil.Process()
        live = [p for p in me.children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
        return {"children": len(live), "engine": sum(p.name().startswith("VLLM::") for p in live),
                "rss": sum(p.memory_info().rss for p in [me, *live])}

    out: dict = {"engines": []}
    for batches in (1, 2):  # the second engine samples the same prompts in two calls: other batches, same draws
        before = processes()
        generator = VLLMGenerator(model, spec, hardware, job["chat_template_kwargs"], seed=7, context=job["context"])
        running = processes()
        limit = job["max_new_tokens"]
        greedy = generator.generate(job["prompts"], SamplingSpec(temperature=0, max_new_tokens=limit))
        half = len(job["prompts"]) // batches
        sampled = [group for start in range(0, len(job["prompts"]), half) for group in generator.generate(
            job["prompts"][start:start + half], SamplingSpec(temperature=1.0, max_new_tokens=limit), n=2)]
        described = generator.describe()
        generator.close()
        after = processes()
        out["engines"].append({
            "greedy": [[list(s.token_ids), s.truncated] for group in greedy for s in group],
            "sampled": [[list(s.token_ids), s.truncated] for group in sampled for s in group],
            "before": before, "running_children": running, "after": after, "describe": described})
    print("VLLM_CHECKS " + json.dumps(out))


if __name__ == "__main__":  # vLLM's engine starts worker processes that re-import this module
    main(*sys.argv[1:])
