"""What keys a base model or a data file: content fingerprints of local folders and files."""

import pytest

from sparse2dense import identity
from sparse2dense.config import ModelSpec


@pytest.fixture(autouse=True)
def memo(tmp_path, monkeypatch):
    monkeypatch.setattr(identity, "_CACHE", tmp_path / "memo" / "fingerprints.json")


def test_a_data_file_is_keyed_by_its_content(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"problem": "1+1", "answer": "2"}\n')
    b.write_text('{"problem": "2+2", "answer": "4"}\n')
    assert identity.fingerprint(a) != identity.fingerprint(b)
    before = identity.fingerprint(a)
    a.write_text('{"problem": "1+1", "answer": "3"}\n')  # same size, new content
    assert identity.fingerprint(a) != before


def test_a_folder_is_keyed_by_its_files(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    before = identity.fingerprint(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\0")
    assert identity.fingerprint(tmp_path / "m") != before


def test_a_missing_local_model_folder_fails_instead_of_completing(tmp_path):
    (tmp_path / "m").mkdir()
    assert identity.fetch_model(ModelSpec(source="hub", name=str(tmp_path / "m"))) == str(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="no model folder"):
        identity.fetch_model(ModelSpec(source="hub", name=str(tmp_path / "missing")))
