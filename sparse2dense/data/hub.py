"""The paper's hub datasets, each mapped to one schema: rows {id, problem, answer}.

Every source keeps its real column layout on disk; a small mapper per source turns one raw record into
the common row, so the rest of the code never sees hub-specific columns. `path=` loads a local copy in the
same layout, which is how tests and offline machines use this module.

Rows that cannot be used are counted by reason and skipped, never trained on: an empty problem, a
missing or empty answer, or an answer that is neither a string nor an integer (AIME copies store
integers, converted exactly; a float, list or boolean could not be compared reliably).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

Row = dict[str, str]


class Loaded(NamedTuple):
    rows: list[Row]
    skipped: dict[str, int]  # reason -> count
    # Each row's place among the distinct records, unusable ones included: the authors shuffle those.
    places: list[int] | None = None
    records: int | None = None  # how many distinct records there were


class BadRow(ValueError):
    """A raw record that cannot become a row; its message is the reason it is counted under."""

# DAPO wraps every problem in the same instruction; the bare problem is what the students must see.
DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'

DATA_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json"}


class HubSource(NamedTuple):
    """Where a dataset lives on the hub and how one raw record becomes a row."""

    repo_id: str
    split: str
    columns: tuple[str, ...]  # raw columns the mapper reads; checked up front for a clear error
    to_row: Callable[[dict], Row]
    dedup: bool = False  # DAPO repeats each problem ~100 times; keep the first copy only
    data_files: str | None = None  # the file inside the hub repo, where it is not the default split


def dapo_problem(prompt: list[dict] | str | None) -> str:
    """The bare problem inside DAPO's prompt (a chat or a plain string), instruction prefix and suffix removed."""
    if isinstance(prompt, str):
        text = prompt
    else:
        text = prompt[0].get("content") if prompt and isinstance(prompt[0], dict) else None
    if not isinstance(text, str):
        return ""
    return text.removeprefix(DAPO_PREFIX).removesuffix(DAPO_SUFFIX).strip()


def _dapo_row(record: dict) -> Row:
    problem = _problem(dapo_problem(record["prompt"]))
    # Ids come from the text, not the row position, so they survive dedup and reshuffles.
    digest = hashlib.sha256(problem.encode("utf-8")).hexdigest()[:12]
    answer = _answer((record["reward_model"] or {}).get("ground_truth"))
    return {"id": f"dapo-{digest}", "problem": problem, "answer": answer}


def _row(row_id: str, record: dict) -> Row:
    return {"id": row_id, "problem": _problem(record["problem"]), "answer": _answer(record["answer"])}


def _problem(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRow("empty problem")
    return value.strip()


def _answer(value) -> str:
    # Some copies store answers as ints (AIME); the schema is strings throughout.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRow("missing answer")
    if not isinstance(value, str):
        raise BadRow("non-string answer")
    return value.strip()


def _math500_row(record: dict) -> Row:
    return _row(f"math500-{record['unique_id']}", record)


def _aime_row(prefix: str) -> Callable[[dict], Row]:
    return lambda record: _row(f"{prefix}-{record['id']}", record)


HUB_DATASETS: dict[str, HubSource] = {
    "dapo-math-17k": HubSource(
        "BytedTsinghua-SIA/DAPO-Math-17k", "train", ("prompt", "reward_model"), _dapo_row, dedup=True
    ),
    # The deduplicated copy the authors' prepare_grpo_data.py reads (distinct-prompts-with-rewards.parquet,
    # 17,398 rows), in DAPO's layout; its row order decides the seed-42 split, so it is used as it is.
    "dapo-math-17k-dedup": HubSource(
        "YouJiacheng/DAPO-Math-17k-dedup", "train", ("prompt", "reward_model"), _dapo_row,
        data_files="distinct-prompts-with-rewards.parquet",
    ),
    "math500": HubSource("HuggingFaceH4/MATH-500", "test", ("problem", "answer", "unique_id"), _math500_row),
    "aime24": HubSource("HuggingFaceH4/aime_2024", "train", ("id", "problem", "answer"), _aime_row("aime24")),
    "aime25": HubSource("yentinglin/aime_2025", "train", ("id", "problem", "answer"), _aime_row("aime25")),
}


def _load_raw(source: HubSource, path: str | None):
    """The raw `datasets.Dataset`: from the hub, a local data file, or a local folder."""
    import datasets  # heavy import, only paid when data is actually loaded

    if path is None:
        return datasets.load_dataset(source.repo_id, data_files=source.data_files, split=source.split)
    local = Path(path)
    if local.is_file():
        builder = DATA_FILE_BUILDERS.get(local.suffix)
        if builder is None:
            raise ValueError(f"unsupported data file {path}: expected one of {sorted(DATA_FILE_BUILDERS)}")
        return datasets.load_dataset(builder, data_files=str(local), split="train")
    if local.is_dir():
        try:
            # A snapshot of the hub repo keeps its split names, so the folder loads like the hub id.
            return datasets.load_dataset(str(local), split=source.split)
        except (ValueError, FileNotFoundError):
            return _load_folder_files(local)
    raise ValueError(f"{path} is neither a data file nor a folder")


def _load_folder_files(folder: Path):
    """All data files inside a folder as one split, for folders whose file names don't name the split."""
    import datasets

    for suffix, builder in DATA_FILE_BUILDERS.items():
        files = sorted(str(f) for f in folder.rglob(f"*{suffix}"))
        if files:
            return datasets.load_dataset(builder, data_files=files, split="train")
    raise ValueError(f"no {'/'.join(DATA_FILE_BUILDERS)} files in {folder}")


def load_hub_rows(name: str, path: str | None = None, limit: int | None = None) -> Loaded:
    """Rows {id, problem, answer} of a named hub dataset, and the count of skipped records by reason.

    `path` overrides the hub id with a local folder or data file (parquet/json/jsonl) in the same column
    layout (this is how tests and offline users load it). `limit` caps the number of returned rows (after
    dedup), stopping the scan early."""
    if name not in HUB_DATASETS:
        raise ValueError(f"unknown hub dataset {name!r}; known: {sorted(HUB_DATASETS)}")
    source = HUB_DATASETS[name]
    raw = _load_raw(source, path)
    missing = [c for c in source.columns if c not in raw.column_names]
    if missing:
        where = path or source.repo_id
        raise ValueError(f"{name}: expected column {missing[0]!r} in {where}, found {raw.column_names}")

    rows: list[Row] = []
    places: list[int] = []
    records = 0
    skipped: Counter[str] = Counter()
    seen: set[str] = set()
    # Batched column access: per-row iteration over DAPO's ~1.79M raw rows would be needlessly slow.
    for batch in raw.select_columns(list(source.columns)).iter(batch_size=10_000):
        for values in zip(*(batch[c] for c in source.columns)):
            try:
                row = source.to_row(dict(zip(source.columns, values)))
            except BadRow as why:
                skipped[str(why)] += 1
                records += 1
                continue
            if source.dedup:
                if row["problem"] in seen:
                    skipped["duplicate"] += 1
                    continue
                seen.add(row["problem"])
            rows.append(row)
            places.append(records)
            records += 1
            if limit is not None and len(rows) >= limit:
                return Loaded(rows, dict(skipped), places, records)
    return Loaded(rows, dict(skipped), places, records)


def split_dapo(rows: list[Row], seed: int = 42, heldout_fraction: float = 0.2, places: list[int] | None = None,
               records: int | None = None) -> tuple[list[Row], list[Row]]:
    """(train, heldout) of deduplicated DAPO rows by the authors' rule (src/data/prepare_grpo_data.py).

    `Dataset.shuffle(seed=42)` (a PCG64 permutation from `np.random.default_rng(seed)`), then the FIRST
    int(0.8 n) rows are train and the rest held out: 17,398 rows -> 13,918 train / 3,480 held out.
    (`train_test_split` shuffles the same way but takes its test set from the front: same sizes, disjoint sets.)
    Reimplemented with numpy so the split needs no Arrow round trip.

    The authors shuffle every distinct record and drop none, so unusable records keep their places in the
    permutation (`places`: each row's index among the `records` distinct ones) and are left out afterwards:
    one bad record does not move every other row to the other side of the cut.
    """
    places = list(range(len(rows))) if places is None else places
    n = len(rows) if records is None else records
    n_train = int((1 - heldout_fraction) * n)
    row_at = dict(zip(places, rows))
    order = np.random.default_rng(seed).permutation(n)
    return ([row_at[i] for i in order[:n_train] if i in row_at],
            [row_at[i] for i in order[n_train:] if i in row_at])
