import pytest

from sparse2dense.generation import Sample
from sparse2dense.stages.evaluate import pass_at_k, score


def samples(texts):
    return [Sample(t, tuple(range(len(t))), (0,), truncated=False) for t in texts]


def test_avg_and_pass_at_k_match_hand_computed_values():
    right, wrong = "\\boxed{5}", "\\boxed{4}"
    groups = [samples([right, right, right, right]),     # 4/4 correct
              samples([right, wrong, wrong, wrong]),     # 1/4
              samples([wrong, "no answer", wrong, wrong])]  # 0/4
    metrics, correct = score(groups, ["5", "5", "5"], pass_at=[1, 2, 4])
    assert correct[1] == [True, False, False, False]
    assert metrics["avg@4"] == pytest.approx(5 / 12)
    assert metrics["pass@1"] == pytest.approx((1 + 0.25 + 0) / 3)
    # pass@2 for one correct in four: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert metrics["pass@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert metrics["pass@4"] == pytest.approx(2 / 3)
    assert metrics["tokens_generated"] == sum(len(s.text) for g in groups for s in g)
    assert metrics["mean_response_tokens"] == pytest.approx(metrics["tokens_generated"] / 12)


def test_pass_at_k_edges():
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 1, 16) == 1.0
    assert pass_at_k(16, 4, 1) == pytest.approx(0.25)
