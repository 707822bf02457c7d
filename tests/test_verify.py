import threading

import pytest

from sparse2dense.verify import is_correct, last_boxed

CASES = [
    ("so the answer is \\boxed{53}", "53", True),
    ("\\boxed{53}", " 53 ", True),
    ("\\boxed{1/2}", "0.5", True),
    ("\\boxed{\\frac{1}{2}}", "\\frac12", True),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True),
    ("\\boxed{x^2+2x}", "2x+x^2", True),
    ("\\boxed{5} then \\boxed{53}", "53", True),   # the last box counts
    ("\\boxed{53} then \\boxed{5}", "53", False),
    ("the answer is 53", "53", False),             # no box is wrong
    ("\\boxed{53", "53", False),                   # unclosed box is wrong
    ("\\boxed{}", "53", False),
    ("\\boxed{54}", "53", False),
    ("\\boxed{-7}", "-7", True),
    ("\\boxed{\\{1,2\\}}", "\\{2,1\\}", True),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}", True),
    ("\\boxed{(1, 2)}", "(1,2)", True),
    ("\\boxed{\\text{banana}}", "53", False),
]


@pytest.mark.parametrize("completion,gold,expected", CASES)
def test_is_correct(completion, gold, expected):
    assert is_correct(completion, gold) is expected


def test_last_boxed_balances_braces():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert last_boxed("nothing") is None


def test_safe_from_worker_threads():
    # math-verify's signal-based timeouts would raise outside the main thread.
    results = []
    workers = [threading.Thread(target=lambda: results.append(is_correct("\\boxed{0.5}", "1/2"))) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert results == [True] * 4
