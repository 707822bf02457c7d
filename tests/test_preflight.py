"""`s2d grid` refuses, before any compute, budgets that hub data cannot hold: its pools are only known once
the data is loaded, so the profile's own checks cannot see them."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # read once, when `datasets` / `huggingface_hub` are imported
os.environ["HF_DATASETS_OFFLINE"] = "1"

from pathlib import Path

import pytest
import yaml

from sparse2dense import cli
from sparse2dense.config import load_grid, load_profile
from sparse2dense.planning import dag, preflight

FIXTURES = Path(__file__).parent / "fixtures" / "hub"  # DAPO: 5 distinct problems -> 4 train, 1 held out
TINY_QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
              "vocab_size": 512, "tie_word_embeddings": False}


@pytest.fixture(autouse=True)
def datasets_cache(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


def hub_profile(tmp_path, **data) -> Path:
    """The paper profile on the hub-layout fixtures and two tiny local model folders."""
    for role in ("teacher", "student"):
        (tmp_path / role).mkdir(exist_ok=True)
        (tmp_path / role / "config.json").write_text(json.dumps(TINY_QWEN3))
    profile = {
        "extends": "qwen3-8b-1.7b", "name": "fixture-hub",
        "grpo": {"steps": 1}, "opd": {"steps": 1},  # a split of 2 problems holds no whole batch of the paper's
        "models": {role: {"name": str(tmp_path / role), "vocab_size": 512} for role in ("teacher", "student")},
        "data": {"train_dataset": "dapo-math-17k", "train_path": str(FIXTURES / "dapo_math_17k.parquet"),
                 "labeled_budget": 2, "heldout_budget": 1, "distill_prompts": 2,
                 "benchmarks": [{"name": "aime24", "source": "aime24", "path": str(FIXTURES / "aime_2024.parquet")}],
                 **data},
    }
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def problems(tmp_path, path, **overrides) -> list[str]:
    plan = dag.plan(load_profile(path, overrides), load_grid("allocation"))
    return preflight.problems(plan, tmp_path / "artifacts")


def test_budgets_that_fit_the_hub_pools_pass(tmp_path):
    assert problems(tmp_path, hub_profile(tmp_path)) == []


@pytest.mark.parametrize("field,value,pool", [("labeled_budget", 5, "4 labeled"), ("heldout_budget", 2, "1 heldout"),
                                              ("distill_prompts", 5, "4 distill")])
def test_a_budget_larger_than_its_hub_pool_is_refused(tmp_path, field, value, pool):
    found = problems(tmp_path, hub_profile(tmp_path), **{f"data.{field}": value})
    assert len(found) == 1 and found[0].startswith(f"data.{field} = {value} is larger than its pool: {pool} problems")


def test_a_training_file_in_another_layout_is_one_line(tmp_path):
    found = problems(tmp_path, hub_profile(tmp_path, train_path=str(FIXTURES / "math500.jsonl")))
    assert len(found) == 1 and "does not load as dapo-math-17k" in found[0] and "expected column 'prompt'" in found[0]


def test_the_cli_refuses_with_one_line_and_computes_nothing(tmp_path, capsys):
    code = cli.main(["grid", "--profile", str(hub_profile(tmp_path)), "--labeled-budget", "9",
                     "--artifacts", str(tmp_path / "artifacts")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert err.startswith("s2d grid: data.labeled_budget = 9 is larger than its pool: 4 labeled problems")
    assert not (tmp_path / "artifacts" / "base").exists()


def test_a_gang_under_the_local_runner_is_refused_in_one_line_before_anything_else():
    plan = dag.plan(load_profile("llama-70b-8b"), load_grid("allocation"), None, [0])
    [line] = preflight.local_gangs(plan)
    assert "grpo teacher-grpo needs 2 machines x 8 GPUs" in line and "--runner ray" in line
    assert "direct-grpo" not in line  # the student's GRPO runs on one machine
    assert preflight.local_gangs(dag.plan(load_profile("qwen3-8b-1.7b"), load_grid("allocation"), None, [0])) == []


def test_colocated_vllm_context_is_the_longest_prompt_plus_the_completion_limit():
    from sparse2dense.models import build_toy_tokenizer
    from sparse2dense.stages.common import vllm_args

    smoke = load_profile("smoke")
    profile = smoke.model_copy(update={"generation": smoke.generation.model_copy(update={"backend": "vllm"})})
    prompts = [[{"role": "user", "content": "1+2"}], [{"role": "user", "content": "10+20+30"}]]
    args = vllm_args(profile, build_toy_tokenizer(), prompts, 24)
    assert args["use_vllm"] and args["vllm_max_model_length"] == 1 + len("10+20+30") + 1 + 24


def runtime_problems(tmp_path, python: str, backend: str) -> list[str]:
    profile = load_profile("smoke", {"resources.evaluate": {"launch": "process", "python": python},
                                     "generation.backend": backend})
    return preflight.problems(dag.plan(profile, load_grid("allocation"), ["teacher-base"]), tmp_path / "artifacts")


def test_a_node_runtime_is_checked_before_compute_one_line_each(tmp_path):
    import sys

    missing = str(tmp_path / "no-env" / "bin" / "python")
    [line] = runtime_problems(tmp_path, missing, "transformers")
    assert line.startswith(f"resources: the node runtime {missing} does not exist")
    assert runtime_problems(tmp_path, sys.executable, "transformers") == []
    [line] = runtime_problems(tmp_path, sys.executable, "vllm")  # the grid's environment has no vLLM
    assert line == (f"resources: the node runtime {sys.executable} cannot import vllm, which its nodes need: "
                    "install it there")
    assert not (tmp_path / "artifacts" / "base").exists()


def test_a_node_runtime_on_a_node_that_is_not_launched_is_refused():
    with pytest.raises(ValueError, match="python \\(a node runtime\\) needs launch: process or accelerate"):
        load_profile("smoke", {"resources.evaluate": {"python": "/usr/bin/python3"}})


@pytest.mark.parametrize("profile, command", [("hub-smoke", "make hub-smoke"),
                                              ("hub-smoke-vllm", "make hub-smoke-vllm")])
def test_stand_ins_not_yet_built_are_one_line_that_says_how(tmp_path, monkeypatch, profile, command):
    monkeypatch.chdir(tmp_path)
    plan = dag.plan(load_profile(profile), load_grid("allocation"), ["teacher-base"])
    found = [line for line in preflight.problems(plan, tmp_path / "artifacts") if "node runtime" not in line]
    assert found == [f"{tmp_path / ('.' + profile)} does not exist: this profile's models and data are local stand-ins "
                     f"for the hub's, which `{command}` builds there"]
