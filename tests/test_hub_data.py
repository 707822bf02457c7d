"""Hub dataset loaders on small local copies in the real column layouts; nothing here reaches the network."""

import os

# Set before `datasets` / `huggingface_hub` are imported: both read these once, at import.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sparse2dense.hub_data import DAPO_PREFIX, DAPO_SUFFIX, HUB_DATASETS, load_hub_rows, split_dapo

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
    assert set(HUB_DATASETS) == {"dapo-math-17k", "math500", "aime24", "aime25"}


def test_dapo_dedups_and_strips_wrapper():
    raw = pq.read_table(DAPO).to_pylist()
    rows = load_hub_rows("dapo-math-17k", path=str(DAPO))
    assert_schema(rows)
    assert len(raw) == 9 and len(rows) == 5  # the fixture repeats problems like the hub copy does
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
    rows = load_hub_rows("dapo-math-17k", path=str(DAPO), limit=3)
    assert [r["answer"] for r in rows] == ["34", "-6", "12"]


def test_math500():
    rows = load_hub_rows("math500", path=str(FIXTURES / "math500.jsonl"))
    assert_schema(rows)
    assert rows[0] == {
        "id": "math500-test/precalculus/807.json",
        "problem": rows[0]["problem"],
        "answer": "\\left( 3, \\frac{\\pi}{2} \\right)",
    }
    assert rows[0]["problem"].startswith("Convert the point $(0,3)$")
    assert len(rows) == 4


def test_aime24_keeps_leading_zeros():
    rows = load_hub_rows("aime24", path=str(FIXTURES / "aime_2024.parquet"))
    assert_schema(rows)
    assert [r["id"] for r in rows] == ["aime24-60", "aime24-61", "aime24-62"]
    assert [r["answer"] for r in rows] == ["204", "025", "809"]


def test_aime25():
    rows = load_hub_rows("aime25", path=str(FIXTURES / "aime_2025.jsonl"))
    assert_schema(rows)
    assert [r["id"] for r in rows] == ["aime25-0", "aime25-1", "aime25-2"]
    assert [r["answer"] for r in rows] == ["70", "16", "117"]


def test_int_answers_become_strings(tmp_path):
    path = tmp_path / "aime.jsonl"
    path.write_text(json.dumps({"id": 7, "problem": "P", "answer": 42, "url": "u", "year": 2025}) + "\n")
    assert load_hub_rows("aime25", path=str(path)) == [{"id": "aime25-7", "problem": "P", "answer": "42"}]


def test_folder_with_split_named_file(tmp_path):
    # A hub snapshot names its file after the split (MATH-500 ships test.jsonl).
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    shutil.copy(FIXTURES / "math500.jsonl", snapshot / "test.jsonl")
    expected = load_hub_rows("math500", path=str(FIXTURES / "math500.jsonl"))
    assert load_hub_rows("math500", path=str(snapshot)) == expected


def test_folder_with_other_file_names(tmp_path):
    # File names that name no split still load: every data file in the folder becomes the rows.
    (tmp_path / "data").mkdir()
    shutil.copy(FIXTURES / "aime_2025.jsonl", tmp_path / "data" / "aime25_copy.jsonl")
    rows = load_hub_rows("aime25", path=str(tmp_path))
    assert [r["id"] for r in rows] == ["aime25-0", "aime25-1", "aime25-2"]


def test_wrong_layout_names_dataset_and_column():
    path = str(FIXTURES / "aime_2025.jsonl")  # AIME has no unique_id column
    with pytest.raises(ValueError, match=r"math500: expected column 'unique_id' in .*aime_2025\.jsonl, found \["):
        load_hub_rows("math500", path=path)


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match=r"unknown hub dataset 'gsm8k'.*aime24.*dapo-math-17k.*math500"):
        load_hub_rows("gsm8k", path=str(DAPO))


def test_split_dapo_sizes_disjoint_deterministic():
    rows = [{"id": f"dapo-{i}", "problem": f"p{i}", "answer": str(i)} for i in range(17_398)]
    train, heldout = split_dapo(rows)
    assert (len(train), len(heldout)) == (13_918, 3_480)
    train_ids, heldout_ids = {r["id"] for r in train}, {r["id"] for r in heldout}
    assert not train_ids & heldout_ids and len(train_ids | heldout_ids) == len(rows)
    assert split_dapo(rows) == (train, heldout)
    assert split_dapo(rows, seed=0)[1] != heldout


def test_split_dapo_matches_datasets_train_test_split():
    # The documented contract: same partition as Dataset.train_test_split(test_size=0.2, seed=42).
    import datasets

    rows = [{"id": f"dapo-{i}", "problem": f"p{i}", "answer": str(i)} for i in range(997)]
    expected = datasets.Dataset.from_list(rows).train_test_split(test_size=0.2, seed=42)
    train, heldout = split_dapo(rows)
    assert train == expected["train"].to_list()
    assert heldout == expected["test"].to_list()
