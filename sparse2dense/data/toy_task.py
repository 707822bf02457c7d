"""The toy verifiable-math task: +/- chains with worked solutions, generated from a seed.

"47+3-5+8" is solved step by step ("47+3=50", "50-5=45", "45+8=53") and ends in
\\boxed{53}, so the same verifier, prompts and stages serve the toy and the paper's data.
"""

from __future__ import annotations

import random

from ..config import ToyTaskSpec


def make_problem(rng: random.Random, spec: ToyTaskSpec) -> tuple[str, list[str], int]:
    """One chain: its text, its worked steps and its value."""
    low = 10 ** (spec.first_digits - 1) if spec.first_digits > 1 else 0
    value = rng.randint(low, 10**spec.first_digits - 1)
    text, steps = str(value), []
    for _ in range(rng.randint(spec.min_ops, spec.max_ops)):
        operand = rng.randint(1, spec.operand_max)
        op = rng.choice("+-")
        if op == "-" and value - operand < 0 and not spec.allow_negative:
            op = "+"
        new = value + operand if op == "+" else value - operand
        steps.append(f"{value}{op}{operand}={new}")
        text += f"{op}{operand}"
        value = new
    return text, steps, value


def solution_text(steps: list[str], answer: int) -> str:
    return "\n".join(steps) + f"\n\\boxed{{{answer}}}"


def generate(spec: ToyTaskSpec, n: int, seed: int, exclude: set[str] = frozenset(), prefix: str = "toy") -> list[dict]:
    """n distinct problems as rows {id, problem, answer, solution}; `exclude` keeps splits disjoint."""
    rng = random.Random(seed)
    rows: list[dict] = []
    seen = set(exclude)
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"the toy task has too few distinct problems for {n} (widen its knobs)")
        text, steps, answer = make_problem(rng, spec)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"id": f"{prefix}-{text}", "problem": text, "answer": str(answer),
                     "solution": solution_text(steps, answer)})
    return rows
