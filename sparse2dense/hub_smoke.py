"""Local stand-ins for the paper's hub checkpoints and data files, for the `hub-smoke` profile.

    python -m sparse2dense.hub_smoke [DIR] [--head-dim N]   # default DIR: .hub-smoke in the working directory
    python -m sparse2dense.hub_smoke .hub-smoke-vllm --head-dim 32   # the `hub-smoke-vllm` profile's

writes, once (a complete DIR is left as it is; a build goes to a temporary folder renamed at the end):

    DIR/data/dapo-math-17k.parquet   DAPO-Math-17k's layout: the instruction wrapper around each problem,
                                     reward_model.ground_truth, extra_info, every problem repeated
    DIR/data/math500/test.jsonl      MATH-500's layout (unique_id, subject, level, solution)
    DIR/data/aime_2024.parquet       HuggingFaceH4/aime_2024's layout (int ids, "025"-style answers)
    DIR/data/aime_2025.jsonl         yentinglin/aime_2025's layout
    DIR/tokenizer                    a byte-level BPE trained here, Qwen3's special tokens and a Qwen3-style
                                     chat template that honours enable_thinking
    DIR/models/teacher, student      tiny Qwen3ForCausalLM checkpoints saved as Qwen's are: bf16 weights,
                                     a vocabulary padded past the tokenizer's, a generation_config.json whose
                                     eos_token_id lists <|im_end|> and <|endoftext|> and that samples by default

The problems are the toy task's +/- sums, worded like competition problems; a few seconds of
pretraining on worked solutions lets the models sometimes answer (and stop), so rewards are not
all zero. Nothing here reaches the network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
import uuid
from pathlib import Path

DEFAULT_DIR = ".hub-smoke"  # `make hub-smoke` builds here (locations.STAND_INS)
VERSION = 1  # bump when the files change: a DIR built by another version (or head size) is rebuilt
MARKER = "COMPLETE.json"  # written last: its presence (with this VERSION and head size) means DIR is complete

PROMPT_SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."  # the paper's
IM_START, IM_END, END_OF_TEXT, THINK, END_THINK = "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"
# Qwen3's added tokens in id order (special or not), from id 151,643 after its regular vocabulary: 151,669 in all.
QWEN3_ADDED = [
    (END_OF_TEXT, True), (IM_START, True), (IM_END, True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    (THINK, False), (END_THINK, False),
]
CHAT_TOKENS = [(END_OF_TEXT, True), (IM_START, True), (IM_END, True), (THINK, False), (END_THINK, False)]
BPE_VOCAB = 600  # at most this many learned tokens (the 256 byte symbols included); the corpus gives ~450
MODEL_VOCAB = 512  # the models' vocabulary, padded past the tokenizer's as Qwen3's 151936 > 151669 (the profile
                   # declares it)
N_DAPO, DAPO_REPEATS = 320, 3
PRETRAIN = {"teacher": {"steps": 200, "lr": 5e-3}, "student": {"steps": 150, "lr": 1e-2}}  # ~20 s on 2 cores
ARCH = {  # teacher untied like Qwen3-8B, student tied like Qwen3-1.7B
    "teacher": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=192, tie_word_embeddings=False),
    "student": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                    intermediate_size=64, tie_word_embeddings=True),
}
HEAD_DIM = 16
VLLM_HEAD_DIM = 32  # the smallest head size vLLM's CPU attention takes (16 fails: "Unsupported CPU attention")

# Qwen3's template, tools left out: ChatML turns; an assistant turn after the last user turn shows its
# reasoning in <think></think>; enable_thinking=false puts an empty think block after the generation prompt.
CHAT_TEMPLATE = """\
{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(last_query_index=messages|length - 1) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {%- set ns.last_query_index = loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
            {{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' }}
            {{- content.lstrip('\\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

_WORDINGS = (
    "Compute ${e}$.",
    "What is the value of ${e}$?",
    "Evaluate the expression ${e}$.",
    "Find $x$ if $x = {e}$.",
    "Let $N = {e}$. What is $N$?",
)


# --- data -----------------------------------------------------------------------------------


def _problems(n: int, seed: int, taboo: set[str], aime: bool = False) -> list[dict]:
    """n distinct sums {expr, problem, solution, answer}; `taboo` keeps sets disjoint (and is extended)."""
    from .config import ToyTaskSpec
    from .data import toy_task

    spec = ToyTaskSpec(first_digits=2, min_ops=1, max_ops=2, operand_max=9)
    rng, rows = random.Random(seed), []
    while len(rows) < n:
        expr, steps, value = toy_task.make_problem(rng, spec)
        if expr in taboo:
            continue
        taboo.add(expr)
        problem = rng.choice(_WORDINGS).format(e=expr)
        if aime:
            problem += " Express your answer as a three-digit integer."
        rows.append({"expr": expr, "problem": problem, "solution": toy_task.solution_text(steps, value),
                     "answer": f"{value:03d}" if aime else str(value)})
    return rows


def _write_data(folder: Path) -> dict[str, list[dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .data.hub import DAPO_PREFIX, DAPO_SUFFIX

    folder.mkdir(parents=True)
    taboo: set[str] = set()
    sets = {"dapo": _problems(N_DAPO, 1, taboo), "math500": _problems(4, 2, taboo),
            "aime24": _problems(3, 3, taboo, aime=True), "aime25": _problems(3, 4, taboo)}

    # DAPO-Math-17k: each problem wrapped in the instruction, repeated as on the hub (dedup keeps the first).
    dapo = [{"data_source": "math_dapo",
             "prompt": [{"content": DAPO_PREFIX + r["problem"] + DAPO_SUFFIX, "role": "user"}],
             "ability": "MATH",
             "reward_model": {"ground_truth": r["answer"], "style": "rule-lighteval/MATH_v2"},
             "extra_info": {"index": str(uuid.UUID(hashlib.md5(r["problem"].encode()).hexdigest()))}}
            for _ in range(DAPO_REPEATS) for r in sets["dapo"]]
    schema = pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
        ("extra_info", pa.struct([("index", pa.string())])),
    ])
    pq.write_table(pa.Table.from_pylist(dapo, schema=schema), folder / "dapo-math-17k.parquet")

    # MATH-500: test.jsonl in a folder, as the hub repo ships it; two real problems keep LaTeX answers in play.
    math500 = [{"problem": r["problem"], "solution": r["solution"], "answer": r["answer"], "subject": "Prealgebra",
                "level": 1, "unique_id": f"test/prealgebra/{100 + i}.json"} for i, r in enumerate(sets["math500"])]
    math500 += [
        {"problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.  Enter your answer "
                    "in the form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$",
         "solution": "We have $r = 3$ and $\\theta = \\frac{\\pi}{2}$, so the answer is "
                     "$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
         "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
         "unique_id": "test/precalculus/807.json"},
        {"problem": "Simplify $\\frac{1}{2} + \\frac{1}{4}$.", "solution": "$\\frac{2}{4} + \\frac{1}{4} = "
         "\\boxed{\\frac{3}{4}}$.", "answer": "\\frac{3}{4}", "subject": "Prealgebra", "level": 1,
         "unique_id": "test/prealgebra/1747.json"},
    ]
    (folder / "math500").mkdir()
    _jsonl(folder / "math500" / "test.jsonl", math500)

    # AIME 2024 (HuggingFaceH4/aime_2024): int ids, string answers with their leading zeros.
    aime24 = [{"id": 60 + i, "problem": r["problem"], "solution": r["solution"], "answer": r["answer"],
               "url": f"https://artofproblemsolving.com/wiki/index.php/2024_AIME_I_Problems/Problem_{i + 1}",
               "year": "2024"} for i, r in enumerate(sets["aime24"])]
    schema = pa.schema([("id", pa.int64()), ("problem", pa.string()), ("solution", pa.string()),
                        ("answer", pa.string()), ("url", pa.string()), ("year", pa.string())])
    pq.write_table(pa.Table.from_pylist(aime24, schema=schema), folder / "aime_2024.parquet")

    # AIME 2025 (yentinglin/aime_2025): jsonl.
    _jsonl(folder / "aime_2025.jsonl", [
        {"id": i, "problem": r["problem"], "answer": r["answer"],
         "url": f"https://artofproblemsolving.com/wiki/index.php/2025_AIME_I_Problems/Problem_{i + 1}",
         "year": "2025"} for i, r in enumerate(sets["aime25"])])
    return sets


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# --- tokenizer ------------------------------------------------------------------------------


def _messages(problem: str) -> list[dict]:
    return [{"role": "user", "content": f"{problem}\n\n{PROMPT_SUFFIX}"}]


def build_tokenizer(corpus: list[str], bpe_vocab: int = BPE_VOCAB, regular: int | None = None):
    """A byte-level BPE in Qwen2/3's pipeline (NFC, Qwen's split regex, byte level) learned from `corpus`, then
    Qwen3's added tokens after the learned ones, as in Qwen3. `regular`: pad the learned vocabulary with filler
    tokens to this many ids first (Qwen3's 151,643), so all 26 of Qwen3's added tokens land at Qwen3's ids;
    without it only the five a chat needs are added."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    core = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                                fuse_unk=False, byte_fallback=False))
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=bpe_vocab, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(corpus, trainer)
    if regular:
        core = _padded(core, regular)
    added = QWEN3_ADDED if regular else CHAT_TOKENS
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, special in added if special])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t, special in added if not special])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=IM_END, pad_token=END_OF_TEXT, bos_token=None,
                                  unk_token=None, additional_special_tokens=[IM_START, IM_END],
                                  model_max_length=131072, clean_up_tokenization_spaces=False)
    tok.chat_template = CHAT_TEMPLATE
    if regular and tok.convert_tokens_to_ids([t for t, _ in added]) != list(range(regular, regular + len(added))):
        raise RuntimeError(f"Qwen3's added tokens did not land at its ids from {regular}")
    return tok


def _padded(core, size: int):
    """`core` with filler tokens up to `size` ids: "Ġzz" and letters, reachable by no merge, so ids match a real
    vocabulary's size and any sampled id decodes to text."""
    from tokenizers import Tokenizer

    spec = json.loads(core.to_str())
    vocab = spec["model"]["vocab"]
    i = 0
    while len(vocab) < size:
        n, word = i, ""
        while True:
            word = "abcdefghijklmnopqrstuvwxyz"[n % 26] + word
            n //= 26
            if not n:
                break
        i += 1
        if "\u0120zz" + word not in vocab:
            vocab["\u0120zz" + word] = len(vocab)
    return Tokenizer.from_str(json.dumps(spec))


def save_tokenizer(tokenizer, folder: Path) -> None:
    """Saved as Qwen3's is: its tokenizer_config names Qwen2Tokenizer, which AutoTokenizer then loads."""
    tokenizer.save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "tokenizer_class": "Qwen2Tokenizer"}, indent=2) + "\n")


def _corpus(sets: dict[str, list[dict]]) -> list[str]:
    from .data.hub import DAPO_PREFIX, DAPO_SUFFIX

    texts = [DAPO_PREFIX, DAPO_SUFFIX, PROMPT_SUFFIX, "user", "assistant", "system"]
    for rows in sets.values():
        for r in rows:
            texts += [r["problem"], f"{r['problem']}\n\n{PROMPT_SUFFIX}", r["solution"]]
    return texts


# --- models ---------------------------------------------------------------------------------


def qwen3_model(shape: dict, tokenizer, vocab: int, seed: int, dtype=None, device: str = "cpu"):
    """A randomly initialised Qwen3 of `shape` (its config.json's sizes) with `vocab` embedding rows, padded past
    the tokenizer's as Qwen3's 151,936 > 151,669, and Qwen3's generation config: two end tokens, sampling."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, Qwen3Config

    end_of_text, im_end = tokenizer.convert_tokens_to_ids([END_OF_TEXT, IM_END])
    config = Qwen3Config(vocab_size=vocab, **shape, max_position_embeddings=40960, rope_theta=1_000_000.0,
                         bos_token_id=end_of_text, eos_token_id=im_end, pad_token_id=None)
    torch.manual_seed(seed)
    with torch.device(device):  # random init on a GPU takes seconds where the CPU takes a minute
        model = AutoModelForCausalLM.from_config(config, **({"dtype": dtype} if dtype else {}))
    model.generation_config = GenerationConfig(
        bos_token_id=end_of_text, pad_token_id=end_of_text, eos_token_id=[im_end, end_of_text],
        do_sample=True, temperature=0.6, top_p=0.95, top_k=20)
    return model


def _pretrain(model, tokenizer, rows: list[dict], steps: int, lr: float, seed: int) -> float:
    """A few seconds of next-token training on worked solutions (the completion only); returns the last loss.

    Half the solutions end with <|im_end|>, half with <|endoftext|>: Qwen3's generation config lists both, and
    the samples should show generation stopping on either."""
    import torch

    end_of_text, im_end = tokenizer.convert_tokens_to_ids([END_OF_TEXT, IM_END])
    rng = random.Random(seed)
    seqs = []
    for r in rows:
        prompt = tokenizer.apply_chat_template(_messages(r["problem"]), tokenize=False, add_generation_prompt=True,
                                               enable_thinking=False)
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(r["solution"], add_special_tokens=False)["input_ids"] + [im_end if rng.random() < 0.5
                                                                               else end_of_text]
        seqs.append((p, c))
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        batch = rng.sample(seqs, 32)
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.full((len(batch), width), end_of_text)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, (p, c) in enumerate(batch):
            n = len(p) + len(c)
            ids[i, :n] = torch.tensor(p + c)
            labels[i, len(p):n] = torch.tensor(c)
            mask[i, :n] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return float(loss.detach())


# --- the whole folder -----------------------------------------------------------------------


def is_complete(folder: Path, head_dim: int = HEAD_DIM) -> bool:
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("version") == VERSION and marker.get("head_dim", HEAD_DIM) == head_dim


def build(folder: str | Path = DEFAULT_DIR, log=print, head_dim: int = HEAD_DIM) -> Path:
    """Build `folder` unless it is complete already (at this head size); returns its absolute path."""
    folder = Path(folder).expanduser().resolve()
    if is_complete(folder, head_dim):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        summary = _build_into(tmp, log, head_dim)
        (tmp / MARKER).write_text(json.dumps({"version": VERSION, "head_dim": head_dim, **summary}, indent=2))
        if folder.exists():
            if is_complete(folder, head_dim):  # another build finished meanwhile
                return folder
            shutil.rmtree(folder)  # an older version's, or a partial copy from before this builder
        try:
            os.rename(tmp, folder)
        except OSError:
            if not is_complete(folder, head_dim):  # else another build renamed its copy into place first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _build_into(tmp: Path, log, head_dim: int) -> dict:
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))  # tiny models: more threads only add overhead
    try:
        sets = _write_data(tmp / "data")
        tokenizer = build_tokenizer(_corpus(sets))
        save_tokenizer(tokenizer, tmp / "tokenizer")
        if len(tokenizer) > MODEL_VOCAB:
            raise RuntimeError(f"the tokenizer has {len(tokenizer)} tokens, more than MODEL_VOCAB ({MODEL_VOCAB})")
        summary = {"tokenizer_size": len(tokenizer), "model_vocab_size": MODEL_VOCAB, "models": {}}
        for seed, role in enumerate(("teacher", "student")):
            model = qwen3_model({**ARCH[role], "head_dim": head_dim}, tokenizer, MODEL_VOCAB, seed)
            loss = _pretrain(model, tokenizer, sets["dapo"], PRETRAIN[role]["steps"], PRETRAIN[role]["lr"], seed)
            model.to(torch.bfloat16).save_pretrained(tmp / "models" / role)  # Qwen3 ships bf16 weights
            save_tokenizer(tokenizer, tmp / "models" / role)
            summary["models"][role] = {"params": model.num_parameters(), "pretrain_loss": round(loss, 4)}
            log(f"hub-smoke: {role} {model.num_parameters():,} parameters, pretrain loss {loss:.3f}")
    finally:
        torch.set_num_threads(threads)
    summary["build_s"] = round(time.perf_counter() - start, 1)
    log(f"hub-smoke: built in {summary['build_s']} s")
    return summary


def offline_env(work: Path, base: dict | None = None) -> dict:
    """An environment in which the hub-smoke profiles run offline from `work`, with their own artifacts, MLflow
    store, Prefect home and caches (none of the caller's PREFECT_, MLFLOW_ or S2D_ settings); only compiled
    ops (DeepSpeed's, for ZeRO-3 on CPU) are the caller's, which `make setup` built."""
    repo = str(Path(__file__).resolve().parent.parent)
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if not k.startswith(("PREFECT_", "MLFLOW_", "S2D_"))}
    ops = base.get("TORCH_EXTENSIONS_DIR") or str(Path(base.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                                                  / "torch_extensions")
    return env | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(work / "hf"),
                  "XDG_CACHE_HOME": str(work / "cache"), "TORCH_EXTENSIONS_DIR": ops,
                  "S2D_ARTIFACTS": str(work / "artifacts"),
                  "MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db", "PREFECT_HOME": str(work / "prefect"),
                  "PYTHONPATH": os.pathsep.join([repo, *filter(None, [base.get("PYTHONPATH")])])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse2dense.hub_smoke", description="the hub stand-ins")
    parser.add_argument("dir", nargs="?", default=DEFAULT_DIR, help=f"where to build them (default {DEFAULT_DIR})")
    parser.add_argument("--head-dim", type=int, default=HEAD_DIM,
                        help=f"the models' head size ({VLLM_HEAD_DIM} for vLLM's CPU attention; default {HEAD_DIM})")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    if is_complete(folder, args.head_dim):
        print(f"hub-smoke: {folder} is complete")
        return 0
    print(f"hub-smoke: {build(folder, head_dim=args.head_dim)} ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
