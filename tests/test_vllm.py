"""vLLM's CPU build, in the node runtime `make node-runtime` builds (.venv-node; `make test` builds it first),
against the transformers backend on a hub-smoke checkpoint.

The grid's environment cannot hold vLLM 0.31 beside Prefect 3.9 (fastapi), so the vLLM half runs under the
node runtime's Python (tests/vllm_checks.py) and prints what it sampled. Greedy equality is checked in fp32:
bf16 kernels differ between the backends in rounding, which can flip a near-tie of the argmax.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from sparse2dense import hub_smoke
from sparse2dense.config import HardwareSpec, SamplingSpec
from sparse2dense.generation import TransformersGenerator
from sparse2dense.models import load_model, load_tokenizer, longest_prompt

REPO = Path(__file__).resolve().parent.parent
NODE_PYTHON = REPO / ".venv-node" / "bin" / "python"
LIMIT = 16  # new tokens while choosing the second end token
TEMPLATE = {"enable_thinking": False}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The hub-smoke teacher after a few pretraining steps, its end tokens [<|im_end|>, X]: X is a token its
    greedy completion of the first prompt reaches mid-way, so that completion stops on the second end token;
    `limit` leaves room for that stop and cuts a completion that runs longer."""
    patch = pytest.MonkeyPatch()
    patch.setattr(hub_smoke, "PRETRAIN", {role: {"steps": 20, "lr": 5e-3} for role in ("teacher", "student")})
    folder = hub_smoke.build(tmp_path_factory.mktemp("vllm") / "stand-ins", log=lambda _: None,
                             head_dim=hub_smoke.VLLM_HEAD_DIM)
    patch.undo()
    model_dir = folder / "models" / "teacher"
    prompts = [hub_smoke._messages(f"Compute ${a}+{b}$.") for a, b in ((12, 7), (30, 4), (5, 61), (88, 9))]
    first = greedy(model_dir, prompts)[0]
    tokenizer = load_tokenizer(model_dir)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    k, stop = next((i, t) for i, t in enumerate(first) if i >= 2 and t not in first[:i] and t != im_end)
    ends = folder.parent / "two-ends"
    shutil.copytree(model_dir, ends)
    config = json.loads((ends / "generation_config.json").read_text())
    (ends / "generation_config.json").write_text(json.dumps(config | {"eos_token_id": [im_end, stop]}))
    limit = k + 2
    assert any(len(ids) > limit for ids in greedy(ends, prompts)), "no completion runs past the limit"
    return {"path": ends, "prompts": prompts, "stop_at": k, "stop": stop, "tokenizer": tokenizer, "limit": limit}


def greedy(model_dir: Path, prompts: list) -> list[tuple[int, ...]]:
    return [s.token_ids for s in samples(model_dir, prompts, LIMIT)]


def samples(model_dir: Path, prompts: list, limit: int) -> list:
    model = load_model(model_dir, HardwareSpec(device="cpu", precision="fp32"), trainable=False)
    generator = TransformersGenerator(model, load_tokenizer(model_dir), chat_template_kwargs=TEMPLATE)
    return [group[0] for group in generator.generate(prompts, SamplingSpec(temperature=0, max_new_tokens=limit))]


@pytest.fixture(scope="module")
def through_vllm(checkpoint, tmp_path_factory):
    """What two vLLM engines in a row (seed 7 each) sampled, and the processes and memory around each."""
    if not NODE_PYTHON.exists():
        pytest.fail(f"no node runtime at {NODE_PYTHON}: `make node-runtime` builds it (`make test` does)")
    job = tmp_path_factory.mktemp("vllm-job") / "job.json"
    context = longest_prompt(checkpoint["tokenizer"], checkpoint["prompts"], TEMPLATE) + checkpoint["limit"]
    job.write_text(json.dumps({"prompts": checkpoint["prompts"], "chat_template_kwargs": TEMPLATE,
                               "max_new_tokens": checkpoint["limit"], "context": context}))
    done = subprocess.run([str(NODE_PYTHON), str(REPO / "tests" / "vllm_checks.py"), str(checkpoint["path"]),
                           str(job)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("VLLM_CHECKS ")]
    return json.loads(line.removeprefix("VLLM_CHECKS "))


def test_greedy_tokens_match_transformers_at_both_end_tokens_and_at_the_limit(checkpoint, through_vllm):
    hf = samples(checkpoint["path"], checkpoint["prompts"], checkpoint["limit"])
    vllm = through_vllm["engines"][0]["greedy"]
    assert [[list(s.token_ids), s.truncated] for s in hf] == vllm
    # The first prompt stops on the second end token, which stays in the completion.
    ids, truncated = vllm[0]
    assert not truncated and len(ids) == checkpoint["stop_at"] + 1 and ids[-1] == checkpoint["stop"]
    # A completion cut at the limit is flagged and gets no end token appended.
    cut = [ids for ids, truncated in vllm if truncated]
    assert cut and all(len(ids) == checkpoint["limit"] and checkpoint["stop"] not in ids for ids in cut)


def test_the_same_seed_samples_the_same_completions_however_the_engine_batches_them(through_vllm):
    # The second engine took the prompts in two calls; each request's seed, not the batch, decides its samples.
    first, second = (engine["sampled"] for engine in through_vllm["engines"])
    assert first == second
    assert len({tuple(ids) for ids, _ in first}) > 1  # sampled, not greedy


def test_each_engine_is_closed_with_its_processes_and_memory(through_vllm):
    for engine in through_vllm["engines"]:
        assert engine["running_children"]["engine"] >= 1 and engine["after"]["engine"] == 0  # its core runs apart
    # Multiprocessing's resource tracker and vLLM's imports, both from the first engine, stay for the process;
    # the second engine leaves the processes and their memory as it found them.
    second = through_vllm["engines"][1]
    assert second["after"]["children"] == second["before"]["children"]
    held, running = (second[at]["rss"] - second["before"]["rss"] for at in ("after", "running_children"))
    assert held < 128 * 2**20 < running, f"{held >> 20} MiB held after close, {running >> 20} MiB while open"
    assert all(engine["describe"] == {"backend": "vllm", "vllm": "0.31.0"} for engine in through_vllm["engines"])
