"""Answer checking: the last \\boxed{...} of a completion against the reference.

Two checkers: `math-verify` (the default; symbolic, so `0.5` equals `\\frac12`) and `strict`,
the authors' rule: MATH-style string normalisation of both sides, then string equality.
math-verify can spin on a pathological expression; it never gets more than `TIMEOUT_S` here:
on the main thread through its own alarm, elsewhere in a worker process that is replaced when
it overruns (an overrun answer counts as wrong).
"""

from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading

from .strict_math import strict_equal

log = logging.getLogger("sparse2dense")
_BOX = "\\boxed"
TIMEOUT_S = 5
STARTUP_S = 120  # the worker imports sympy and math-verify once


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


def is_correct(completion: str, gold: str, checker: str = "math-verify") -> bool:
    """True when the completion's last boxed answer equals `gold` under `checker`."""
    answer = last_boxed(completion)
    if answer is None:
        return False
    if answer == gold.strip():
        return True  # identical strings need no further check (the common case, and fast)
    if checker == "strict":
        return strict_equal(answer, gold)
    if threading.current_thread() is threading.main_thread():
        return symbolic_equal(answer, gold, TIMEOUT_S)
    return _worker().equal(answer, gold)


def symbolic_equal(answer: str, gold: str, timeout: int | None) -> bool:
    """math-verify on both boxed strings; `timeout` uses signal.alarm, so the main thread only."""
    from math_verify import LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0)]
    try:
        pred = parse(f"$\\boxed{{{answer}}}$", extraction_config=config, parsing_timeout=timeout)
        ref = parse(f"$\\boxed{{{gold}}}$", extraction_config=config, parsing_timeout=timeout)
        return bool(pred and ref and verify(ref, pred, timeout_seconds=timeout))
    except Exception:  # a malformed answer is a wrong answer, never a crashed training step
        return False


class _Worker:
    """math-verify in a child process (JSON lines over pipes), killed and replaced when an answer overruns."""

    def __init__(self):
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def equal(self, answer: str, gold: str) -> bool:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            self.proc.stdin.write(json.dumps([answer, gold]) + "\n")
            self.proc.stdin.flush()
            line = self._read(2 * TIMEOUT_S)  # parsing and verifying, each bounded by math-verify where it can be
            if line is None:
                log.warning("answer check overran %ss (counted wrong): %.80r", 2 * TIMEOUT_S, answer)
                self._stop()
                return False
            return line == "true"

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "sparse2dense.data.verify"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        if self._read(STARTUP_S) != "ready":
            self._stop()
            raise RuntimeError("the answer-checking worker did not start")

    def _read(self, timeout: float) -> str | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else None

    def _stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc = None


_WORKERS: dict[int, _Worker] = {}


def _worker() -> _Worker:
    return _WORKERS.setdefault(os.getpid(), _Worker())  # one per process: a forked child makes its own


def _serve() -> None:
    """The worker's loop: one [answer, gold] per line in, `true`/`false` out (math-verify's own alarm applies).

    It ends when its parent does (end of input, or a closed pipe), quietly: Ctrl-C is the parent's to handle.
    """
    import signal

    import math_verify  # noqa: F401  (imported before saying ready: the first answer is then timed fairly)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        print("ready", flush=True)
        for line in sys.stdin:
            answer, gold = json.loads(line)
            print("true" if symbolic_equal(answer, gold, TIMEOUT_S) else "false", flush=True)
    except BrokenPipeError:
        os._exit(0)


if __name__ == "__main__":
    _serve()
