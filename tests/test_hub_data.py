"""Hub dataset loaders on small local copies in the real column layouts; nothing here reaches the network."""

import os

# Set before `datasets` / `huggingface_hub` are imported: both read these once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparse2dense.data.hub import DAPO_PREFIX, DAPO_SUFFIX, HUB_DATASETS, load_hub_rows, split_dapo


def rows_of(*args, **kwargs):
    return load_hub_rows(*args, **kwargs).rows

FIXTURES = Path(__file__).parent / "fixtures" / "hub"
DAPO = FIXTURES / "dapo_math_17k.parquet"


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    # Keep the env offline per test too, and write Arrow caches under tmp rather than the user's cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def assert_schema(rows):
    assert rows, "no rows loaded"
    for row in rows:
        assert set(row) == {"id", "problem", "answer"}
        assert all(isinstance(v, str) and v for v in row.values())
    assert len({r["id"] for r in rows}) == len(rows), "ids must be unique"


def test_known_names():
    assert set(HUB_DATASETS) == {"dapo-math-17k", "dapo-math-17k-dedup", "math500", "aime24", "aime25"}


def test_dapo_dedups_and_strips_wrapper():
    raw = pq.read_table(DAPO).to_pylist()
    loaded = load_hub_rows("dapo-math-17k", path=str(DAPO))
    rows = loaded.rows
    assert_schema(rows)
    assert len(raw) == 9 and len(rows) == 5  # the fixture repeats problems like the hub copy does
    assert loaded.skipped == {"duplicate": 4}
    for row in rows:
        assert not row["problem"].startswith("Solve the following")
        assert "Remember to put your answer" not in row["problem"]
        assert row["id"] == "dapo-" + hashlib.sha256(row["problem"].encode()).hexdigest()[:12]
    # First occurrences, in order, with ground truth as the answer.
    first = rows[0]
    assert raw[0]["prompt"][0]["content"] == DAPO_PREFIX + first["problem"] + DAPO_SUFFIX
    assert first["answer"] == raw[0]["reward_model"]["ground_truth"] == "34"
    assert [r["answer"] for r in rows] == ["34", "-6", "12", "4", "319"]


def test_limit_counts_unique_rows():
    rows = rows_of("dapo-math-17k", path=str(DAPO), limit=3)
    assert [r["answer"] for r in rows] == ["34", "-6", "12"]


def test_math500():
    rows = rows_of("math500", path=str(FIXTURES / "math500.jsonl"))
    assert_schema(rows)
    assert rows[0] == {
        "id": "math500-test/precalculus/807.json",
        "problem": rows[0]["problem"],
        "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
    }
    assert rows[0]["problem"].startswith("Convert the point $(0,3)$")
    assert len(rows) == 4


def test_aime24_keeps_leading_zeros():
    rows = rows_of("aime24", path=str(FIXTURES / "aime_2024.parquet"))
    assert_schema(rows)
    assert [r["id"] for r in rows] == ["aime24-60", "aime24-61", "aime24-62"]
    assert [r["answer"] for r in rows] == ["204", "025", "809"]


def test_aime25():
    rows = rows_of("aime25", path=str(FIXTURES / "aime_2025.jsonl"))
    assert_schema(rows)
    assert [r["id"] for r in rows] == ["aime25-0", "aime25-1", "aime25-2"]
    assert [r["answer"] for r in rows] == ["70", "16", "117"]


def test_int_answers_become_strings(tmp_path):
    path = tmp_path / "aime.jsonl"
    path.write_text(json.dumps({"id": 7, "problem": "P", "answer": 42, "url": "u", "year": 2025}) + "\n")
    assert rows_of("aime25", path=str(path)) == [{"id": "aime25-7", "problem": "P", "answer": "42"}]


def test_folder_with_split_named_file(tmp_path):
    # A hub snapshot names its file after the split (MATH-500 ships test.jsonl).
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    shutil.copy(FIXTURES / "math500.jsonl", snapshot / "test.jsonl")
    rows = rows_of("math500", path=str(snapshot))
    assert len(rows) == 4 and rows[0]["problem"].startswith("Convert the point $(0,3)$")  # the fixture's rows


def test_folder_with_other_file_names(tmp_path):
    # File names that name no split still load: every data file in the folder becomes the rows.
    (tmp_path / "data").mkdir()
    shutil.copy(FIXTURES / "aime_2025.jsonl", tmp_path / "data" / "aime25_copy.jsonl")
    rows = rows_of("aime25", path=str(tmp_path))
    assert [r["id"] for r in rows] == ["aime25-0", "aime25-1", "aime25-2"]


def test_wrong_layout_names_dataset_and_column():
    path = str(FIXTURES / "aime_2025.jsonl")  # AIME has no unique_id column
    with pytest.raises(ValueError, match=r"math500: expected column 'unique_id' in .*aime_2025\.jsonl, found \["):
        load_hub_rows("math500", path=path)


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match=r"unknown hub dataset 'gsm8k'.*aime24.*dapo-math-17k.*math500"):
        load_hub_rows("gsm8k", path=str(DAPO))


def write_aime(path, records):
    path.write_text("".join(json.dumps(r | {"url": "u", "year": 2025}) + "\n" for r in records))
    return str(path)


def test_bad_rows_are_counted_by_reason_and_skipped(tmp_path):
    strings = write_aime(tmp_path / "a.jsonl", [
        {"id": 1, "problem": "Good", "answer": "7"}, {"id": 2, "problem": "  ", "answer": "3"},
        {"id": 3, "problem": "No answer", "answer": None}, {"id": 4, "problem": "Empty", "answer": " "},
        {"id": 5, "problem": "Fine", "answer": "025"}])
    loaded = load_hub_rows("aime25", path=strings)
    assert [r["answer"] for r in loaded.rows] == ["7", "025"]
    assert loaded.skipped == {"empty problem": 1, "missing answer": 2}
    # A column of another type (floats, booleans) cannot be compared reliably: every row is skipped, and counted.
    floats = write_aime(tmp_path / "b.jsonl", [{"id": 1, "problem": "P", "answer": 2.5}])
    assert load_hub_rows("aime25", path=floats)[:2] == ([], {"non-string answer": 1})


def test_a_benchmark_with_no_usable_rows_is_refused(tmp_path):
    from sparse2dense.config import BenchmarkSpec, DataSpec
    from sparse2dense.data.problems import benchmark

    path = tmp_path / "aime.jsonl"
    path.write_text(json.dumps({"id": 1, "problem": "", "answer": "1", "url": "u", "year": 2025}) + "\n")
    spec = BenchmarkSpec(name="aime25", source="aime25", path=str(path))
    data = DataSpec(source="hub", labeled_budget=1, heldout_budget=1, distill_prompts=1, benchmarks=[spec])
    with pytest.raises(ValueError, match="no usable rows"):
        benchmark(spec, data)


def test_split_dapo_sizes_disjoint_deterministic():
    rows = [{"id": f"dapo-{i}", "problem": f"p{i}", "answer": str(i)} for i in range(17_398)]
    train, heldout = split_dapo(rows)
    assert (len(train), len(heldout)) == (13_918, 3_480)
    train_ids, heldout_ids = {r["id"] for r in train}, {r["id"] for r in heldout}
    assert not train_ids & heldout_ids and len(train_ids | heldout_ids) == len(rows)
    assert split_dapo(rows) == (train, heldout)
    assert split_dapo(rows, seed=0)[1] != heldout


def test_split_dapo_follows_the_authors_rule():
    """src/data/prepare_grpo_data.py: dataset.shuffle(seed=42), the first int(0.8 n) rows train, the rest held out."""
    import datasets

    rows = [{"id": f"dapo-{i}", "problem": f"p{i}", "answer": str(i)} for i in range(997)]
    shuffled = datasets.Dataset.from_list(rows).shuffle(seed=42)
    cut = int(len(rows) * 0.8)
    train, heldout = split_dapo(rows)
    assert train == shuffled.select(range(cut)).to_list()
    assert heldout == shuffled.select(range(cut, len(rows))).to_list()
    # train_test_split shuffles the same way but holds out the front: same sizes, the wrong 20%.
    other = datasets.Dataset.from_list(rows).train_test_split(test_size=0.2, seed=42)["test"].to_list()
    assert len(other) == len(heldout) and not {r["id"] for r in other} & {r["id"] for r in heldout}


def test_dedup_copy_is_read_as_it_is(tmp_path):
    """The authors' deduplicated copy: DAPO's layout, its order kept (it decides the split), nothing dropped."""
    raw = pq.read_table(DAPO).to_pylist()
    path = tmp_path / "distinct-prompts-with-rewards.parquet"
    pq.write_table(pq.read_table(DAPO).slice(0, 3), path)
    loaded = load_hub_rows("dapo-math-17k-dedup", path=str(path))
    assert [r["answer"] for r in loaded.rows] == [r["reward_model"]["ground_truth"] for r in raw[:3]]


def test_split_dapo_shuffles_every_record_before_unusable_ones_are_left_out():
    """One unusable record must not move the other rows across the cut: the authors shuffle all records."""
    rows = [{"id": f"dapo-{i}", "problem": f"p{i}", "answer": str(i)} for i in range(997)]
    full_train, full_heldout = split_dapo(rows)
    kept = rows[1:]  # record 0 was unusable
    train, heldout = split_dapo(kept, places=list(range(1, 997)), records=997)
    assert train == [r for r in full_train if r["id"] != "dapo-0"]
    assert heldout == [r for r in full_heldout if r["id"] != "dapo-0"]


def test_loaded_rows_keep_their_places_among_the_records(tmp_path):
    table = pq.read_table(DAPO).to_pylist()
    broken = [{**table[0], "reward_model": {**table[0]["reward_model"], "ground_truth": ""}}, *table]
    path = tmp_path / "dapo.parquet"
    pq.write_table(pa.Table.from_pylist(broken), path)
    loaded = load_hub_rows("dapo-math-17k-dedup", path=str(path))
    assert loaded.places[0] == 1 and loaded.records == len(loaded.rows) + sum(loaded.skipped.values())
