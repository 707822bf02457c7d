"""Bad input is refused before any compute, in seconds: exit status 2, a line naming the problem and the fix,
no traceback."""

import json
import time
from pathlib import Path

import pytest
import yaml

from .conftest import PROFILE, Grid

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hub"
QWEN3_8B = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 4096, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 12288,
            "vocab_size": 151936, "tie_word_embeddings": False}
LIMIT_S = 15


def model_folder(path: Path, **config) -> str:
    """A local model folder as far as the checks read it: its config.json."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({**QWEN3_8B, **config}))
    return str(path)


def hub_profile(tmp_path: Path, **changes) -> str:
    """The paper profile on local files: fixtures in the hub layouts, model folders given by `changes`."""
    data = {"extends": "qwen3-8b-1.7b", "name": "local", "grpo": {"steps": 1}, "opd": {"steps": 1},  # 2 problems
            "models": {"teacher": {"source": "hub", "name": model_folder(tmp_path / "teacher")},
                       "student": {"source": "hub", "name": model_folder(tmp_path / "student")}},
            "data": {"train_dataset": "dapo-math-17k", "train_path": str(FIXTURES / "dapo_math_17k.parquet"),
                     "labeled_budget": 2, "heldout_budget": 1, "distill_prompts": 2,
                     "benchmarks": [{"name": "aime25", "source": "aime25", "path": str(FIXTURES / "aime_2025.jsonl")}]}}
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        target = data
        for key in parents:
            target = target.setdefault(key, {})
        target[leaf] = value
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def refused(grid: Grid, *args: str, env: dict | None = None) -> str:
    start = time.monotonic()
    done = grid.run("grid", *args, env=env, timeout=120)
    took = time.monotonic() - start
    print(f"refused in {took:.1f}s: {done.stderr.strip()[:200]}")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr and took < LIMIT_S
    assert not (grid.artifacts / "base").exists(), "nothing may be computed"
    return done.stderr


@pytest.fixture
def fresh(tmp_path) -> Grid:
    return Grid(tmp_path)


def test_unreachable_tracking_server(fresh):
    err = refused(fresh, "--profile", PROFILE, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert "the MLflow tracking server http://127.0.0.1:9 does not answer" in err and "make ui" in err


def test_artifact_root_not_writable(fresh):
    err = refused(fresh, "--profile", PROFILE, "--artifacts", "/proc/nope")
    assert "the artifact root /proc/nope is not writable" in err and "--artifacts" in err


def test_missing_local_model(fresh, tmp_path):
    err = refused(fresh, "--profile", hub_profile(tmp_path, **{"models.teacher.name": str(tmp_path / "gone")}))
    assert f"models.teacher.name: {tmp_path / 'gone'} is not a model folder" in err


def test_missing_local_data(fresh, tmp_path):
    err = refused(fresh, "--profile", hub_profile(tmp_path, **{"data.train_path": str(tmp_path / "dapo.parquet")}))
    assert f"data.train_path: {tmp_path / 'dapo.parquet'} does not exist" in err


def test_hub_model_with_no_network_and_no_cache(fresh, tmp_path):
    err = refused(fresh, "--profile", "qwen3-8b-1.7b",
                  env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home")})
    assert "models.teacher.name: Qwen/Qwen3-8B cannot be resolved" in err and "huggingface-cli download" in err


def test_teacher_and_student_vocabularies_differ(fresh, tmp_path):
    student = model_folder(tmp_path / "other-student", vocab_size=128256)
    err = refused(fresh, "--profile", hub_profile(tmp_path, **{"models.student": {"source": "hub", "name": student}}))
    assert "the teacher's vocabulary (151936) differs from the student's (128256)" in err


def test_declared_vocabulary_is_checked_against_the_checkpoint(fresh, tmp_path):
    err = refused(fresh, "--profile", hub_profile(tmp_path, **{"models.teacher.vocab_size": 151936,
                                                                "models.student.vocab_size": 151936,
                                                                "models.teacher.name": model_folder(
                                                                    tmp_path / "t2", vocab_size=150000)}))
    assert "models.teacher.vocab_size is 151936, but" in err


def test_not_enough_disk_for_the_planned_checkpoints(fresh, tmp_path):
    big = {"hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64, "intermediate_size": 28672}
    teacher = model_folder(tmp_path / "big-teacher", **big)
    err = refused(fresh, "--profile", hub_profile(tmp_path, **{"models.teacher": {"source": "hub", "name": teacher}}))
    assert "GiB free; the" in err and "training nodes to compute need about" in err


def test_a_benchmark_with_no_usable_rows(fresh, tmp_path):
    empty = tmp_path / "aime25.jsonl"
    empty.write_text(json.dumps({"id": 1, "problem": "", "answer": "3", "url": "u", "year": 2025}) + "\n")
    err = refused(fresh, "--profile", hub_profile(tmp_path, **{"data.benchmarks": [
        {"name": "aime25", "source": "aime25", "path": str(empty)}]}))
    assert "data.benchmarks.aime25: no usable rows" in err and "empty problem" in err


def test_an_unknown_profile_field(fresh, tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"extends": "smoke", "grpo": {"learning_rat": 0.1}}))
    err = refused(fresh, "--profile", str(path))
    assert "grpo.learning_rat: Extra inputs are not permitted" in err
