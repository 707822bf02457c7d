"""Teacher rollouts on the distillation prompts, saved for the forward-KL warmup (Stage 2a).

Each rollout keeps the token ids the teacher sampled and whether it was cut off at the length
limit, so the warmup trains on exactly what the teacher produced.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Profile, RolloutsSpec
from ..data import problems
from ..data.problems import Split
from ..generation import open_generator
from ..models import set_threads
from .common import result, stopwatch, write_json, write_jsonl


def rollouts(profile: Profile, spec: RolloutsSpec, teacher_path: str, split: Split, out: Path, seed: int) -> dict:
    """`samples_per_prompt` teacher completions per prompt, as rows {id, prompt, prompt_ids, completion_ids, ...}."""
    set_threads(profile.hardware)
    with stopwatch() as clock:
        convs = [problems.messages(r["problem"], profile.data) for r in split.rows]
        with open_generator(teacher_path, profile, seed, convs, spec.max_new_tokens) as generator:
            samples = generator.generate(convs, spec, n=spec.samples_per_prompt)
            backend = generator.describe()
        rows = [{"id": r["id"], "prompt": c, "prompt_ids": list(s.prompt_ids), "completion_ids": list(s.token_ids),
                 "completion": s.text, "num_tokens": s.num_tokens, "truncated": s.truncated}
                for r, c, group in zip(split.rows, convs, samples) for s in group]
        write_jsonl(out / "rollouts.jsonl", rows)
        # Forward KL with soft targets needs the teacher that sampled these sequences.
        write_json(out / "meta.json", {"teacher": str(teacher_path), "split": split.describe()})
    tokens = sum(r["num_tokens"] for r in rows)
    metrics = {"rollouts": len(rows), "tokens_generated": tokens, "mean_response_tokens": tokens / max(len(rows), 1),
               "truncated_fraction": sum(r["truncated"] for r in rows) / max(len(rows), 1)}
    done = result(compute_s=clock["seconds"], rollouts=out / "rollouts.jsonl", metrics=metrics)
    return done | {"generation": backend}
