"""The comparison table: mean ± standard error over seeds, and nothing made up for one seed."""

from sparse2dense import report


def row(arm: str, seed: int, value: float) -> dict:
    return {"arm": arm, "seed": seed, "budget": 512, "status": "completed", "labels_on": "none", "labels_used": 0,
            "compute_s": 1.0, "toy-test/avg@4": value}


def test_seeds_give_mean_and_standard_error_and_one_seed_gives_the_value_alone():
    table = report.markdown([row("a", 0, 0.2), row("a", 1, 0.4), row("b", 0, 0.25)])
    lines = table.splitlines()
    assert lines[2].startswith("| a | 2 | 30.0 ± 10.0 |")
    assert lines[3].startswith("| b | 1 | 25.0 |")
