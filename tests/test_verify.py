import threading

import pytest

from sparse2dense.data.verify import is_correct, last_boxed

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


def test_a_pathological_answer_never_hangs_a_worker_thread():
    """9^(9^(9^9)) makes sympy compute a number with hundreds of millions of digits, holding the GIL: only a
    separate process can bound it. From a worker thread (where math-verify's alarm cannot run) it is wrong in time."""
    import time

    from sparse2dense.data.verify import TIMEOUT_S

    results = []
    worker = threading.Thread(target=lambda: results.append(is_correct("\\boxed{9^{9^{9^{9}}}}", "1")))
    worker.start()
    worker.join(120)  # the checking process's start, then the bound
    start = time.monotonic()
    assert results == [False]
    again = threading.Thread(target=lambda: results.append(is_correct("\\boxed{9^{9^{9^{9}}}}", "2")))
    again.start()
    again.join(4 * TIMEOUT_S)
    assert results == [False, False] and time.monotonic() - start < 4 * TIMEOUT_S


def test_the_strict_checker_is_the_authors_normalisation():
    from sparse2dense.data.strict_math import normalize, strict_equal

    assert strict_equal("\\dfrac{1}{2}", "\\frac12") and strict_equal("0.5", "\\frac{1}{2}")
    assert strict_equal("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})")
    assert strict_equal("x = 5", "5") and strict_equal("5 \\text{ cm}", "5") and strict_equal("3/4", "\\frac{3}{4}")
    assert not strict_equal("0.50", "\\frac{1}{2}") and not strict_equal("1,000", "1000")
    assert normalize("\\sqrt2") == "\\sqrt{2}" and normalize("10^\\circ") == "10"
    assert is_correct("so \\boxed{1/2}", "0.5", "strict") and not is_correct("\\boxed{2/4}", "1/2", "strict")
