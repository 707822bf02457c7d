"""The hub-smoke profile: the paper profiles' hub code path, offline on CPU, on locally built stand-ins.

The grid test builds the files with `python -m sparse2dense.hub_smoke` in a fresh working directory and runs
`s2d grid --profile hub-smoke` there as a newcomer would, in its own process (its own temporary Prefect
server, MLflow store and artifact root), with the hub unreachable.
"""

import json
import subprocess
import sys
import time

import pytest

from sparse2dense import hub_smoke

QUESTION = [{"role": "user", "content": "Compute $2+3$."}]


@pytest.fixture(scope="module")
def tokenizer():
    return hub_smoke.build_tokenizer(["Compute $2+3$.", "2+3=5\n\\boxed{5}", hub_smoke.PROMPT_SUFFIX] * 20)


def test_chat_template_honours_enable_thinking(tokenizer):
    def render(**kwargs):
        return tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True, **kwargs)

    turn = "<|im_start|>user\nCompute $2+3$.<|im_end|>\n<|im_start|>assistant\n"
    assert render() == turn  # thinking is Qwen3's default: the model opens <think> itself
    assert render(enable_thinking=True) == turn
    assert render(enable_thinking=False) == turn + "<think>\n\n</think>\n\n"
    system = [{"role": "system", "content": "Be brief."}]
    assert tokenizer.apply_chat_template(system + QUESTION, tokenize=False).startswith(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n")


def test_chat_template_renders_reasoning_of_the_last_answer_only(tokenizer):
    chat = [*QUESTION, {"role": "assistant", "content": "<think>\nadd\n</think>\n\n5"},
            {"role": "user", "content": "And $3+4$?"}, {"role": "assistant", "content": "<think>\nadd\n</think>\n\n7"}]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    assert "<|im_start|>assistant\n5<|im_end|>" in text  # an earlier turn loses its reasoning, as in Qwen3
    assert text.endswith("<|im_start|>assistant\n<think>\nadd\n</think>\n\n7<|im_end|>\n")


def test_saved_tokenizer_loads_as_qwen3s_does(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    hub_smoke.save_tokenizer(tokenizer, tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "Qwen2Tokenizer"
    assert (loaded.eos_token, loaded.pad_token, loaded.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    text = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.convert_ids_to_tokens(loaded("<think></think>")["input_ids"]) == ["<think>", "</think>"]


@pytest.fixture(scope="module")
def quick_build(tmp_path_factory):
    """The files with one pretraining step per model: the layouts, not the models' skill."""
    patch = pytest.MonkeyPatch()
    patch.setattr(hub_smoke, "PRETRAIN", {role: {"steps": 1, "lr": 1e-3} for role in ("teacher", "student")})
    folder = tmp_path_factory.mktemp("quick") / "stand-ins"
    (folder / "models").mkdir(parents=True)  # a partial folder from an interrupted build is replaced
    hub_smoke.build(folder, log=lambda _: None)
    patch.undo()
    return folder


def test_data_files_load_through_the_hub_loaders(quick_build, monkeypatch, tmp_path):
    import datasets

    from sparse2dense.data.hub import load_hub_rows

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    data = quick_build / "data"
    dapo = load_hub_rows("dapo-math-17k", path=str(data / "dapo-math-17k.parquet"))
    assert len(dapo.rows) == hub_smoke.N_DAPO
    assert dapo.skipped == {"duplicate": hub_smoke.N_DAPO * (hub_smoke.DAPO_REPEATS - 1)}
    assert not any("Answer:" in r["problem"] for r in dapo.rows)  # the instruction wrapper came off
    aime24 = load_hub_rows("aime24", path=str(data / "aime_2024.parquet")).rows
    assert [r["id"] for r in aime24] == ["aime24-60", "aime24-61", "aime24-62"]
    assert all(len(r["answer"]) == 3 for r in aime24) and any(r["answer"].startswith("0") for r in aime24)
    math500 = load_hub_rows("math500", path=str(data / "math500")).rows  # a folder holding test.jsonl
    assert "math500-test/precalculus/807.json" in {r["id"] for r in math500}
    assert len(load_hub_rows("aime25", path=str(data / "aime_2025.jsonl")).rows) == 3


def test_checkpoints_are_laid_out_as_qwen3s(quick_build):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    sizes = {}
    for role in ("teacher", "student"):
        folder = quick_build / "models" / role
        config = AutoConfig.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert config.architectures == ["Qwen3ForCausalLM"] and str(config.dtype) == "torch.bfloat16"
        assert config.vocab_size == hub_smoke.MODEL_VOCAB > len(tok)
        ends = GenerationConfig.from_pretrained(folder).eos_token_id
        assert ends == tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
        sizes[role] = config.hidden_size * config.num_hidden_layers
    assert sizes["teacher"] > sizes["student"]


def test_a_complete_folder_is_left_as_it_is(quick_build):
    marker = quick_build / hub_smoke.MARKER
    before = marker.stat().st_mtime_ns
    assert hub_smoke.build(quick_build) == quick_build.resolve()
    assert marker.stat().st_mtime_ns == before
    assert not list(quick_build.parent.glob(".*.tmp-*"))


# --- the grid ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """Build the files and run every arm of the allocation grid, seed 0, offline; yields what it left."""
    work = tmp_path_factory.mktemp("hub-smoke")
    env = hub_smoke.offline_env(work)

    def s2d(*args, timeout=900):
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True,
                              timeout=timeout)

    times = {}
    start = time.perf_counter()
    built = s2d("-m", "sparse2dense.hub_smoke", timeout=300)
    times["build_s"] = time.perf_counter() - start
    assert built.returncode == 0, built.stdout + built.stderr
    again = s2d("-m", "sparse2dense.hub_smoke", timeout=60)
    assert again.returncode == 0 and "is complete" in again.stdout
    start = time.perf_counter()
    run = s2d("-m", "sparse2dense.cli", "grid", "--profile", "hub-smoke", "--seeds", "0")
    times["grid_s"] = time.perf_counter() - start
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    report = s2d("-m", "sparse2dense.cli", "report", "--profile", "hub-smoke", "--format", "json", timeout=300)
    assert report.returncode == 0, report.stderr
    print(f"hub-smoke: files built in {times['build_s']:.0f} s, grid in {times['grid_s']:.0f} s")
    patch = pytest.MonkeyPatch()
    patch.chdir(work)  # the profile's paths are relative to the working directory
    from sparse2dense import identity

    patch.setattr(identity, "_CACHE", work / "cache" / "sparse2dense" / "fingerprints.json")
    yield {"work": work, "root": work / "artifacts", "report": json.loads(report.stdout), "times": times}
    patch.undo()


@pytest.fixture(scope="module")
def plan(grid):
    from sparse2dense.config import load_grid, load_profile
    from sparse2dense.planning import dag

    return dag.plan(load_profile("hub-smoke"), load_grid("allocation"), None, [0])


def nodes_of(plan, kind):
    return [n for n in plan.nodes.values() if n.kind == kind]


def manifest(grid, node) -> dict:
    from sparse2dense.planning import dag

    return json.loads((dag.node_dir(grid["root"], node) / dag.MANIFEST).read_text())


@pytest.mark.slow
def test_every_arm_completes_offline_from_an_empty_root(grid):
    from sparse2dense.config import load_grid

    rows = grid["report"]
    assert {r["arm"] for r in rows} == set(load_grid("allocation").arms)
    for row in rows:
        assert row["status"] == "completed", row
        assert {"math500/avg@2", "aime24/avg@2", "aime25/avg@2", "aime24/pass@2"} <= set(row)
    bridge_grpo = next(r for r in rows if r["arm"] == "bridge+grpo")
    assert bridge_grpo["labels_on"] == "8 labeled on teacher, 8 heldout on student"


@pytest.mark.slow
def test_base_nodes_are_the_local_folders_keyed_by_content(grid, plan):
    from sparse2dense.identity import fingerprint

    for node in nodes_of(plan, "base"):
        folder = grid["work"] / ".hub-smoke" / "models" / node.params["role"]
        assert node.params["model"] == {"fingerprint": fingerprint(folder)}
        done = manifest(grid, node)
        assert done["params"] == node.params and done["outputs"]["model"] == str(folder.resolve())
    files = [b["file"] for b in nodes_of(plan, "evaluate")[0].params["benchmarks"]]
    assert len(set(files)) == 3  # each benchmark file keyed by its own content


@pytest.mark.slow
def test_rollouts_hold_qwen3_template_token_ids_and_stop_on_either_end_token(grid, plan):
    from transformers import AutoTokenizer

    from sparse2dense.stages.common import read_jsonl

    tok = AutoTokenizer.from_pretrained(grid["work"] / ".hub-smoke" / "tokenizer")
    im_start, im_end, end_of_text = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    no_think = tok("<|im_start|>assistant\n<think>\n\n</think>\n\n", add_special_tokens=False)["input_ids"]
    limit = plan.profile.rollouts.max_new_tokens
    rows = [r for node in nodes_of(plan, "rollouts") for r in read_jsonl(dag_dir(grid, node) / "rollouts.jsonl")]
    assert len(rows) == 2 * plan.profile.data.distill_prompts
    for row in rows:
        prompt, completion = row["prompt_ids"], row["completion_ids"]
        assert prompt[0] == im_start and prompt[-len(no_think):] == no_think
        assert tok.decode(prompt) == tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True,
                                                             enable_thinking=False)
        ends = [i for i, t in enumerate(completion) if t in (im_end, end_of_text)]
        if row["truncated"]:
            assert not ends and len(completion) == limit
        else:
            assert ends == [len(completion) - 1]  # one end token, the last one
    assert {row["completion_ids"][-1] for row in rows if not row["truncated"]} == {im_end, end_of_text}
    assert any(row["truncated"] for row in rows)


def dag_dir(grid, node):
    from sparse2dense.planning import dag

    return dag.node_dir(grid["root"], node)


@pytest.mark.slow
def test_aime_answers_keep_their_leading_zeros(grid, plan):
    from sparse2dense.stages.common import read_jsonl

    for node in nodes_of(plan, "evaluate"):
        samples = read_jsonl(dag_dir(grid, node) / "samples-aime24.jsonl")
        answers = [s["answer"] for s in samples]
        assert all(isinstance(a, str) and len(a) == 3 and a.isdigit() for a in answers), answers
        assert any(a.startswith("0") for a in answers)
        assert [s["id"] for s in samples] == ["aime24-60", "aime24-61", "aime24-62"]
        assert all(len(s["completions"]) == plan.profile.evaluate.samples for s in samples)
