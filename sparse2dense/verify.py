"""Answer checking: the last \\boxed{...} of a completion against the reference, via math-verify."""

from __future__ import annotations

import threading

from math_verify import LatexExtractionConfig, parse, verify

_BOX = "\\boxed"


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}, braces balanced; None when there is none or it is unclosed."""
    start = text.rfind(_BOX + "{")
    if start < 0:
        return None
    depth, i = 0, start + len(_BOX)
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def _timeouts() -> dict:
    # math-verify times out with signal.alarm, which only the main thread may use.
    on_main = threading.current_thread() is threading.main_thread()
    return {"parsing_timeout": 5 if on_main else None}, {"timeout_seconds": 5 if on_main else None}


def is_correct(completion: str, gold: str) -> bool:
    """True when the completion's last boxed answer equals `gold` after MATH-style normalisation."""
    answer = last_boxed(completion)
    if answer is None:
        return False
    if answer == gold.strip():
        return True  # identical strings need no symbolic check (the common case, and fast)
    parse_kw, verify_kw = _timeouts()
    config = [LatexExtractionConfig(boxed_match_priority=0)]
    try:
        pred = parse(f"$\\boxed{{{answer}}}$", extraction_config=config, **parse_kw)
        ref = parse(f"$\\boxed{{{gold}}}$", extraction_config=config, **parse_kw)
        return bool(pred and ref and verify(ref, pred, **verify_kw))
    except Exception:  # a malformed answer is a wrong answer, never a crashed training step
        return False
