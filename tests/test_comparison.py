"""The comparison table: mean ± standard error over seeds, and nothing made up for one seed."""

from sparse2dense.planning import comparison


def row(arm: str, seed: int, value: float) -> dict:
    return {"arm": arm, "seed": seed, "budget": 512, "status": "completed", "labels_on": "none", "labels_used": 0,
            "compute_s": 1.0, "toy-test/avg@4": value}


def test_seeds_give_mean_and_standard_error_and_one_seed_gives_the_value_alone():
    table = comparison.markdown([row("a", 0, 0.2), row("a", 1, 0.4), row("b", 0, 0.25)])
    lines = table.splitlines()
    assert lines[2].startswith("| a | 2 | 30.0 ± 10.0 |")
    assert lines[3].startswith("| b | 1 | 25.0 |")


def test_paired_differences_are_taken_seed_by_seed_on_the_seeds_both_arms_completed():
    table = [row("a", 0, 0.5), row("a", 1, 0.3), row("a", 2, 0.9), row("b", 0, 0.4), row("b", 1, 0.1),
             {**row("b", 2, 0.0), "status": "missing"}]
    result = comparison.paired(table, "a", "b", "toy-test/avg@4")
    assert result["seeds"] == [0, 1]
    assert [round(d, 6) for d in result["differences"]] == [0.1, 0.2]
    assert round(result["mean"], 6) == 0.15 and round(result["sem"], 6) == 0.05
