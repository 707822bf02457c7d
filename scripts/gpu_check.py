#!/usr/bin/env python
"""GPU check: the paper's stages at the paper's model shapes, on one GPU, with no network.

Builds everything under a work folder with hub_smoke's Qwen3 stand-in builder: a byte-level BPE
tokenizer in Qwen3's pipeline, padded to Qwen3's 151,643 regular tokens plus its 26 added tokens,
with Qwen3's chat template, and randomly initialised Qwen3-1.7B and Qwen3-8B models (151,936-row
embeddings, as the real checkpoints have) saved in bf16, plus small local data files in DAPO-Math
and MATH-500 layout. Its profile is the paper's `qwen3-8b-1.7b` on those files, one step per stage.
Then it runs the project's own stage functions on them, one optimizer step each:

    grpo            GRPO on the 1.7B student (sparse2dense.stages.grpo)
    grpo_launched   the same as a launched node (execution.launch -> python -m sparse2dense.execution.launched)
    rollouts        8B teacher samples, the forward-KL warmup's data (stages.rollouts)
    forward_kl      forward KL 8B -> 1.7B on those rollouts (stages.distill.forward_kl)
    opd             on-policy distillation 8B -> 1.7B (stages.distill.opd)
    evaluate        one evaluation batch of the 1.7B (stages.evaluate)
    opd_fsdp2       OPD launched under FSDP2 (`accelerate launch`, 1 process on the GPU, 2 on a CPU): the
                    teacher placed and sharded, bf16 compute, fp32 gradient reduction (its manifest's placement)
    forward_kl_fsdp2  forward KL launched the same way
    vllm            vLLM generation throughput, in a child process, only where `import vllm` works

and prints one JSON object: seconds and peak GPU memory per step beside what `s2d plan` predicts for the
same node (planned_peak_gib, and on a GPU measured_over_planned), optimizer-step seconds,
tokens per second of transformers generation (and vLLM's where installed), versions, and which
steps ran, failed or were skipped. A failing step is recorded and the others still run. The JSON
is rewritten after every step (to --json, default $OUT/gpu_check.json), so a run stopped at its
time limit keeps what it measured.

    python scripts/gpu_check.py                      # the real shapes on the GPU
    python scripts/gpu_check.py --launched           # GRPO as a launched node instead of inline
    python scripts/gpu_check.py --steps all          # both GRPOs, every stage (the GPU session's command)
    python scripts/gpu_check.py --tiny --device cpu  # tiny shapes on the CPU, for tests (under a minute)

The sizes are chosen to fit in 8 minutes on one H200 (an estimate: not yet run on one); no step
starts after --budget-s. Figures are what this run measured on this machine; a CPU run reports
no GPU figure (gpu_measured: false).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Nothing is downloadable on the target machine: never wait on a hub timeout.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sparse2dense import hub_smoke  # noqa: E402  (after the path: this checkout's, which imports nothing heavy)
from sparse2dense.hub_smoke import PROMPT_SUFFIX  # noqa: E402

VOCAB = 151_936  # rows of Qwen3's embedding and lm_head (config.json vocab_size)
REGULAR_TOKENS = 151_643  # Qwen3's byte-level BPE vocabulary; its 26 added tokens follow from this id

# config.json of Qwen/Qwen3-1.7B and Qwen/Qwen3-8B (both: rope_theta 1e6, rms_norm_eps 1e-6, silu, no bias).
SHAPES = {
    "full": {
        "student": dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                        head_dim=128, intermediate_size=6144, tie_word_embeddings=True),
        "teacher": dict(hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                        head_dim=128, intermediate_size=12288, tie_word_embeddings=False),
    },
    "tiny": {
        "student": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=8, intermediate_size=64, tie_word_embeddings=True),
        "teacher": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, intermediate_size=128, tie_word_embeddings=False),
    },
}
# Lengths and batch sizes: realistic per-sequence lengths, batches bounded so the whole run fits
# well inside 8 minutes on one H200 with transformers generation (every random-model completion
# runs to its length limit, so the token counts below are exact).
SIZES = {
    "full": dict(prompt_tokens=100, grpo_prompts=8, grpo_generations=8, grpo_micro_batch=8, completion=512,
                 rollout_prompts=16, fkl_batch=16, fkl_micro_batch=4, opd_prompts=8, opd_micro_batch=4,
                 eval_problems=16, eval_samples=4, eval_tokens=1024, gen_batch=64,
                 vllm_prompts=64, vllm_samples=4, vllm_tokens=1024, budget_s=360),
    "tiny": dict(prompt_tokens=48, grpo_prompts=2, grpo_generations=2, grpo_micro_batch=2, completion=12,
                 rollout_prompts=4, fkl_batch=4, fkl_micro_batch=2, opd_prompts=2, opd_micro_batch=1,
                 eval_problems=3, eval_samples=2, eval_tokens=12, gen_batch=8,
                 vllm_prompts=4, vllm_samples=2, vllm_tokens=12, budget_s=300),
}
STEPS = ("grpo", "rollouts", "forward_kl", "opd", "evaluate", "grpo_launched", "opd_fsdp2", "forward_kl_fsdp2",
         "vllm")  # `--steps all`
DEFAULT_STEPS = ("grpo", "rollouts", "forward_kl", "opd", "evaluate", "opd_fsdp2", "forward_kl_fsdp2", "vllm")
NEEDS = {"forward_kl": "rollouts", "forward_kl_fsdp2": "rollouts"}  # a step that needs another's output
GIB = 2**30

_WORDS = ("let find the number of real positive integer value sum product such that if and only when each "
          "triangle circle radius area point line square prime remainder divided by probability equal "
          "greatest least common multiple sequence term function polynomial root coefficient digit").split()


# --- what gets built ---------------------------------------------------------------------


def problem_text(rng: random.Random, words: int) -> str:
    parts = []
    for _ in range(words):
        r = rng.random()
        if r < 0.2:
            parts.append(f"${rng.randint(2, 999)}$")
        elif r < 0.3:
            parts.append(f"$x^{rng.randint(2, 9)} + {rng.randint(1, 99)}x$")
        else:
            parts.append(rng.choice(_WORDS))
    return " ".join(parts).capitalize() + "?"


def build_tokenizer(folder: Path, seed: int):
    """hub_smoke's Qwen3 stand-in tokenizer, learned here, padded to Qwen3's 151,643 regular tokens."""
    rng = random.Random(seed)
    corpus = [problem_text(rng, 40) + "\n\n" + PROMPT_SUFFIX for _ in range(2000)]
    tok = hub_smoke.build_tokenizer(corpus, bpe_vocab=4096, regular=REGULAR_TOKENS)
    hub_smoke.save_tokenizer(tok, folder)
    return tok, {"tokenizer_length": len(tok), "eos": tok.eos_token_id, "pad": tok.pad_token_id}


def build_model(folder: Path, shape: dict, tokenizer, device: str, seed: int) -> dict:
    """hub_smoke's Qwen3 stand-in at `shape`, randomly initialised, saved in bf16 as a hub checkpoint would be."""
    import torch

    built_on = device
    try:
        model = hub_smoke.qwen3_model(shape, tokenizer, VOCAB, seed, dtype=torch.bfloat16, device=device)
    except Exception:
        if device == "cpu":
            raise
        built_on = "cpu"
        free_memory()
        model = hub_smoke.qwen3_model(shape, tokenizer, VOCAB, seed, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    hub_smoke.save_tokenizer(tokenizer, folder)
    del model
    free_memory()
    return {"params": params, "embedding_rows": VOCAB, "disk_gib": round(folder_bytes(folder) / GIB, 3),
            "initialised_on": built_on, **shape}


def write_data(folder: Path, tokenizer, sizes: dict, seed: int) -> dict:
    """DAPO-Math (training pool) and MATH-500 (benchmark) layouts, with prompts of about `prompt_tokens` tokens."""
    rng = random.Random(seed)
    need = max(sizes["grpo_prompts"], sizes["rollout_prompts"], sizes["opd_prompts"])
    train_rows = 2 * need + 8  # 80% of it is the training pool the splits draw from
    empty = tokenizer.apply_chat_template([{"role": "user", "content": "\n\n" + PROMPT_SUFFIX}], tokenize=False,
                                          add_generation_prompt=True, enable_thinking=False)
    frame = len(tokenizer(empty, add_special_tokens=False)["input_ids"])
    budget = max(4, sizes["prompt_tokens"] - frame)

    def problem(i: int) -> str:
        ids = tokenizer(problem_text(rng, 4 * budget), add_special_tokens=False)["input_ids"][:budget]
        return f"Problem {i}: " + tokenizer.decode(ids).strip()

    folder.mkdir(parents=True, exist_ok=True)
    train, bench = folder / "dapo-math.jsonl", folder / "math500.jsonl"
    with train.open("w") as f:
        for i in range(train_rows):
            f.write(json.dumps({"prompt": [{"role": "user", "content": problem(i)}], "data_source": "math_dapo",
                                "reward_model": {"ground_truth": str(rng.randint(1, 999)), "style": "rule"}}) + "\n")
    with bench.open("w") as f:
        for i in range(sizes["eval_problems"]):
            f.write(json.dumps({"problem": problem(i), "answer": str(rng.randint(1, 999)), "solution": "",
                                "subject": "Algebra", "level": 3, "unique_id": f"test/algebra/{i}.json"}) + "\n")
    return {"train_path": str(train), "benchmark_path": str(bench), "train_rows": train_rows,
            "distill_prompts": need, "prompt_frame_tokens": frame}


def make_profile(paths: dict, sizes: dict, device: str, precision: str, backend: str):
    """The paper's profile (`qwen3-8b-1.7b`) on the check's models, data and sizes, one step per stage."""
    from sparse2dense.config import load_profile

    def section(name: str, **values) -> dict:
        return {f"{name}.{key}": value for key, value in values.items()}

    completion = sizes["completion"]
    once = {"save_steps": 1000, "logging_steps": 1}  # one step: no mid-run checkpoint, one log line
    one_step = {"epochs": None, "steps": 1, **once}
    benchmark = {"name": "math500", "source": "math500", "path": paths["benchmark_path"],
                 "size": sizes["eval_problems"]}
    return load_profile("qwen3-8b-1.7b", {
        "name": "gpu-check",
        **section("models", **{"teacher.name": paths["teacher"], "student.name": paths["student"]}),
        **section("data", train_path=paths["train_path"], labeled_budget=sizes["grpo_prompts"], heldout_budget=2,
                  distill_prompts=paths["distill_prompts"], benchmarks=[benchmark]),
        **section("grpo", **one_step, prompts_per_step=sizes["grpo_prompts"], steps_per_generation=1,
                  num_generations=sizes["grpo_generations"], micro_batch=sizes["grpo_micro_batch"],
                  max_completion_length=completion),
        **section("rollouts", max_new_tokens=completion),
        **section("forward_kl", **once, batch_size=sizes["fkl_batch"], micro_batch=sizes["fkl_micro_batch"],
                  max_length=sizes["prompt_tokens"] + completion + 16),
        **section("opd", **one_step, prompts_per_step=sizes["opd_prompts"], micro_batch=sizes["opd_micro_batch"],
                  max_completion_length=completion),
        **section("evaluate", samples=sizes["eval_samples"], pass_at=[1, sizes["eval_samples"]],
                  max_new_tokens=sizes["eval_tokens"]),
        "generation": {"backend": backend, "batch_size": sizes["gen_batch"], "sleep_mode": False},
        **section("hardware", device=device, precision=precision, **({"num_threads": 2} if device == "cpu" else {})),
        "resources": {"default": {"launch": "inline"}},
    })


# --- the plan's prediction ------------------------------------------------------------------

# The plan's node for each step: (node name in the grid below, on the FSDP2 variant of the profile).
PLANNED = {"grpo": ("grpo", False), "grpo_launched": ("grpo", False), "rollouts": ("rollouts", False),
           "forward_kl": ("forward_kl", False), "opd": ("opd", False), "evaluate": ("student", False),
           "opd_fsdp2": ("opd", True), "forward_kl_fsdp2": ("forward_kl", True)}
CHECK_GRID = {"name": "gpu-check", "nodes": {
    "grpo": {"kind": "grpo", "model": "student", "split": "labeled", "settings": "student_grpo"},
    "rollouts": {"kind": "rollouts", "model": "teacher"},
    "forward_kl": {"kind": "forward_kl", "student": "student", "rollouts": "rollouts"},
    "opd": {"kind": "opd", "teacher": "teacher", "student": "student"}},
    "arms": {"grpo": "grpo", "forward_kl": "forward_kl", "opd": "opd", "student": "student"}}


def planned_memory(profile, fsdp2, gpu_gib: float | None) -> dict:
    """What `s2d plan` predicts per GPU for each step's node at this check's shapes (as if on a GPU, so a CPU
    run shows the prediction too): its peak and the parts that make it up, in GiB."""
    from sparse2dense.config import Grid, Profile
    from sparse2dense.planning import cost, dag

    grid = Grid.model_validate(CHECK_GRID)
    costs = {}
    for sharded in (False, True):
        dumped = profile.model_dump()
        dumped["hardware"] |= {"device": "cuda"} | ({"gpu_memory_gib": gpu_gib} if gpu_gib else {})
        if sharded:
            dumped["resources"] |= {kind: fsdp2.model_dump() for kind in ("opd", "forward_kl")}
        plan = dag.plan(Profile.model_validate(dumped), grid)
        nodes = {row.arm: row.evaluation if row.arm == "student" else row.model for row in plan.rows}
        nodes["rollouts"] = nodes["forward_kl"].input_map["rollouts"]
        estimate = cost.estimate(plan)
        costs[sharded] = {name: estimate.nodes[node.key] for name, node in nodes.items()}
    return {step: {"peak_gib": costs[sharded][name].peak_gpu_memory_gib, "parts_gib": costs[sharded][name].memory}
            for step, (name, sharded) in PLANNED.items()}


def against_plan(record: dict, planned: dict | None) -> dict:
    """The plan's peak beside the measured one, as measured / planned: this process's allocations for an inline
    step, the device's use above what it held before for a launched one."""
    if not planned:
        return {}
    out = {"planned_peak_gib": planned["peak_gib"], "planned_parts_gib": planned["parts_gib"]}
    if "peak_device_used_gib" in record:
        measured = record["peak_device_used_gib"] - record["device_used_before_gib"]
    else:
        measured = record.get("peak_gpu_allocated_gib")
    if measured is not None and planned["peak_gib"]:
        out["measured_over_planned"] = round(measured / planned["peak_gib"], 3)
    return out


# --- measuring -----------------------------------------------------------------------------


def pick_work(mode: str) -> Path:
    """The work folder: $TMPDIR or /tmp, unless only /dev/shm has room for the models and one stage's output.

    Full shapes need about 55 GB at once: both models (20 GB in bf16) and one training stage's output (a
    final checkpoint with Adam state, 24 GB, and the fp32 model, 8 GB); each step's output is deleted after it.
    """
    need = 60 * 10**9 if mode == "full" else 10**9
    candidates = [Path(os.environ.get("TMPDIR", "/tmp")), Path("/dev/shm")]
    room = {c: shutil.disk_usage(c).free for c in candidates if c.is_dir() and os.access(c, os.W_OK)}
    for folder, free in room.items():
        if free >= need:
            return folder / "s2d-gpu-check"
    return max(room, key=room.get, default=candidates[0]) / "s2d-gpu-check"


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def step_timer():
    """A TrainerCallback timing each optimizer step (generation included, for GRPO and OPD)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self.saves: list[float] = []
            self.start = self.end = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            sync()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            sync()
            self.end = time.perf_counter()
            self.seconds.append(round(self.end - self.start, 3))

        def on_save(self, args, state, control, **kwargs):  # called once the checkpoint is written
            self.saves.append(round(time.perf_counter() - self.end, 3))

    return StepTimer()


@contextlib.contextmanager
def generation_meter(calls: list[dict]):
    """Times every TransformersGenerator.generate call (the project's generation path) and counts its tokens."""
    from sparse2dense.generation import TransformersGenerator

    original = TransformersGenerator.generate

    def timed(self, conversations, sampling, n=1):
        sync()
        start = time.perf_counter()
        out = original(self, conversations, sampling, n=n)
        sync()
        seconds = time.perf_counter() - start
        samples = [s for group in out for s in group]
        tokens = sum(s.num_tokens for s in samples)
        calls.append({"model_params": self.model.num_parameters() if self.model is not None else None,
                      "sequences": len(samples), "batch_size": self.batch_size,
                      "max_new_tokens": sampling.max_new_tokens,
                      "mean_prompt_tokens": round(sum(len(s.prompt_ids) for s in samples) / max(len(samples), 1), 1),
                      "tokens": tokens, "seconds": round(seconds, 3),
                      "tokens_per_s": round(tokens / seconds, 1) if seconds else None})
        return out

    TransformersGenerator.generate = timed
    try:
        yield calls
    finally:
        TransformersGenerator.generate = original


class DeviceMemorySampler:
    """Peak device memory in use (all processes: for a launched node), sampled every 0.2 s."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> int:
        import torch

        free, total = torch.cuda.mem_get_info()
        return total - free

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._used())
            time.sleep(0.2)

    def __enter__(self):
        if cuda():
            self.baseline = self._used()
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)


# --- the steps -----------------------------------------------------------------------------


class Check:
    def __init__(self, args):
        self.args = args
        self.mode = "tiny" if args.tiny else "full"
        self.sizes = dict(SIZES[self.mode])
        if args.completion_tokens:
            self.sizes["completion"] = args.completion_tokens
        self.budget_s = args.budget_s or self.sizes["budget_s"]
        self.work = Path(args.work or pick_work(self.mode)).resolve()
        self.json_path = Path(args.json).resolve() if args.json else None
        self.started = time.perf_counter()
        self.report: dict = {"check": "sparse2dense scripts/gpu_check.py", "mode": self.mode, "steps": {},
                             "ran": [], "failed": [], "skipped": []}
        self.state: dict = {}

    # --- bookkeeping

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def save(self) -> None:
        self.report["total_s"] = round(self.elapsed(), 2)
        self._summarise()
        if self.json_path:
            self.json_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.json_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.report, indent=2, default=str))
            os.replace(tmp, self.json_path)

    def log(self, message: str) -> None:
        print(f"[gpu_check {self.elapsed():7.1f}s] {message}", file=sys.stderr, flush=True)

    def run_step(self, name: str, fn) -> None:
        """Run one step unless it must be skipped, measured; free what it wrote and report it. Errors are recorded."""
        why = self._skip_reason(name)
        if why:
            record = {"ok": False, "skipped": why}
        else:
            record = self._measured(name, fn)
            record.update(against_plan(record, getattr(self, "planned", {}).get(name)))
            self._remove_outputs(record)
        self._report(name, record)

    def _skip_reason(self, name: str) -> str | None:
        need = NEEDS.get(name)
        if need and need not in self.report["ran"]:
            return f"needs step {need!r}, which did not run or failed"
        if self.elapsed() > self.budget_s:
            return f"time budget of {self.budget_s:.0f}s spent before it started"
        return None

    def _measured(self, name: str, fn) -> dict:
        """`fn()`'s record with its wall seconds and peak GPU memory; an error becomes the record, not raised."""
        import torch

        self.log(f"{name}: start")
        free_memory()
        if cuda():
            torch.cuda.reset_peak_memory_stats()
        sync()
        start = time.perf_counter()
        record: dict = {}
        try:
            record.update(fn() or {})
            record["ok"] = True
        except _Skip as why:
            record.update(ok=False, skipped=str(why))
        except Exception as err:  # a failed step must not lose the others' figures
            record.update(ok=False, error=f"{type(err).__name__}: {err}"[:2000],
                          traceback=traceback.format_exc()[-4000:])
        sync()
        record["seconds"] = round(time.perf_counter() - start, 3)
        if cuda():
            record["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 3)
            record["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 3)
        free_memory()
        if cuda():
            record["gpu_allocated_after_gib"] = round(torch.cuda.memory_allocated() / GIB, 3)
        return record

    def _remove_outputs(self, record: dict) -> None:
        """A trained 1.7B is 8 GB of fp32: the step's folders go, for the next step's disk (unless --keep)."""
        folders = record.pop("_remove", [])
        if not self.args.keep:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)

    def _report(self, name: str, record: dict) -> None:
        outcome = "ran" if record["ok"] else "skipped" if "skipped" in record else "failed"
        self.report[outcome].append(name)
        self.report["steps"][name] = record
        what = {"ran": "ok", "skipped": f"skipped ({record.get('skipped')})", "failed": f"FAILED {record.get('error')}"}
        took = f" in {record['seconds']}s" if "seconds" in record else ""
        self.log(f"{name}: {what[outcome]}{took}")
        self.save()

    # --- setup

    def environment(self) -> None:
        import importlib.metadata as md

        import torch

        versions = {"python": platform.python_version()}
        for name in ("torch", "transformers", "accelerate", "tokenizers", "trl", "datasets", "pydantic",
                     "math-verify", "pyarrow", "fsspec", "huggingface-hub", "typing-extensions", "vllm"):
            try:
                versions[name] = md.version(name)
            except md.PackageNotFoundError:
                versions[name] = None
        device = self.args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda, but torch sees no GPU")
        self.device = device
        self.precision = self.args.precision or ("bf16" if device == "cuda" else "fp32")
        imports = {}
        for module in ("trl", "datasets", "pydantic", "yaml", "math_verify", "accelerate", "tokenizers"):
            try:
                __import__(module)
                imports[module] = "ok"
            except Exception as err:  # recorded: the steps that need it fail with the same error
                imports[module] = f"{type(err).__name__}: {err}"[:300]
        vllm = self._vllm_importable()
        self.work.parent.mkdir(parents=True, exist_ok=True)
        gpu = device == "cuda"
        self.report.update(
            device=device, device_name=torch.cuda.get_device_name(0) if gpu else platform.processor()
            or platform.machine(), gpu_measured=gpu,
            gpu_total_gib=round(torch.cuda.get_device_properties(0).total_memory / GIB, 2) if gpu else None,
            cpu_count=os.cpu_count(), versions=versions, vllm_importable=vllm["importable"],
            precision=self.precision, backend=self.args.backend, sizes=self.sizes, budget_s=self.budget_s,
            imports=imports, work=str(self.work),
            work_free_gib=round(shutil.disk_usage(self.work.parent).free / GIB, 1),
        )
        if not vllm["importable"]:
            self.report["vllm_import_error"] = vllm["error"]
        if device != "cuda":
            self.report["note"] = "no GPU: every figure here is a CPU run of the tiny or full shapes, not a GPU figure"

    def _vllm_importable(self) -> dict:
        # In a child: a broken vLLM install can take the importing process down or hold the GPU.
        probe = subprocess.run([sys.executable, "-c", "import vllm; print(vllm.__version__)"], capture_output=True,
                               text=True, timeout=300)
        if probe.returncode == 0:
            return {"importable": True, "error": None}
        return {"importable": False, "error": (probe.stderr.strip().splitlines() or ["?"])[-1][:300]}

    def build(self) -> dict:
        """Tokenizer, both models and the data files, under the work folder."""
        out: dict = {}
        if self.work.exists():
            shutil.rmtree(self.work)
        (self.work / "models").mkdir(parents=True)
        start = time.perf_counter()
        tokenizer, out["tokenizer"] = build_tokenizer(self.work / "tokenizer", seed=0)
        out["tokenizer"]["seconds"] = round(time.perf_counter() - start, 3)
        self.tokenizer = tokenizer
        shapes = SHAPES[self.mode]
        paths: dict = {}
        for role, seed in (("student", 1), ("teacher", 2)):
            start = time.perf_counter()
            folder = self.work / "models" / role
            out[role] = build_model(folder, shapes[role], tokenizer, self.device, seed)
            out[role]["seconds"] = round(time.perf_counter() - start, 3)
            paths[role] = str(folder)
            self.log(f"built {role}: {out[role]['params'] / 1e9:.3f}B parameters in {out[role]['seconds']}s")
        data = write_data(self.work / "data", tokenizer, self.sizes, seed=0)
        paths.update(data)
        out["data"] = data
        self.paths = paths
        self.profile = make_profile(paths, self.sizes, self.device, self.precision, self.args.backend)
        from sparse2dense.data import problems

        self.splits = {name: problems.split(self.profile.data, name) for name in ("labeled", "distill")}
        out["splits"] = {name: s.describe() for name, s in self.splits.items()}
        self.planned = planned_memory(self.profile, self._fsdp2(), self.report.get("gpu_total_gib"))
        out["planned_peak_gib"] = {step: plan["peak_gib"] for step, plan in self.planned.items()}
        from sparse2dense.data.verify import is_correct

        # Random models never write \\boxed{}, so the reward never calls math-verify: call it once here.
        out["answer_checker_ok"] = is_correct("so \\boxed{\\frac{1}{2}}", "0.5") and not is_correct("\\boxed{3}", "4")
        return out

    # --- stages, through the project's code

    def grpo(self) -> dict:
        from sparse2dense.stages.grpo import grpo

        timer = step_timer()
        out = self.work / "grpo"
        result = grpo(self.profile, self.profile.student_grpo, self.paths["student"], self.splits["labeled"], out,
                      seed=0, callbacks=[timer])
        return self._trained(result, timer, out,
                             completions=self.sizes["grpo_prompts"] * self.sizes["grpo_generations"])

    def grpo_launched(self) -> dict:
        """GRPO as the grid launches it: spec.json, `-m sparse2dense.execution.launched`, its manifest (no MLflow)."""
        from sparse2dense.config import GridNode, ResourceSpec

        return self._launched(GridNode(kind="grpo", model="student", split="labeled", settings="student_grpo"),
                              {"model": {"outputs": {"model": self.paths["student"]}}},
                              ResourceSpec(launch="process", gpus=1 if self.device == "cuda" else 0))

    def opd_fsdp2(self) -> dict:
        """OPD launched under FSDP2 (`accelerate launch`): the teacher placed and sharded beside the student."""
        return self._launched(self._grid_node(kind="opd", teacher="teacher", student="student"),
                              {"teacher": {"outputs": {"model": self.paths["teacher"]}},
                               "student": {"outputs": {"model": self.paths["student"]}}}, self._fsdp2())

    def forward_kl_fsdp2(self) -> dict:
        """Forward KL launched under FSDP2 on the rollouts step's output."""
        rollouts = str(Path(self.state["rollouts"]) / "rollouts.jsonl")
        return self._launched(self._grid_node(kind="forward_kl", student="student", rollouts="rollouts"),
                              {"student": {"outputs": {"model": self.paths["student"]}},
                               "rollouts": {"outputs": {"rollouts": rollouts}}}, self._fsdp2())

    @staticmethod
    def _grid_node(**fields):
        from sparse2dense.config import GridNode

        return GridNode(**fields)

    def _fsdp2(self):
        """One process on the GPU (enough to catch placement and dtype faults); on a CPU, 2 (FSDP needs a group)."""
        from sparse2dense.config import ResourceSpec

        gpu = self.device == "cuda"
        return ResourceSpec(launch="accelerate", processes=1 if gpu else 2, gpus=1 if gpu else 0, strategy="fsdp2",
                            offload=False)

    def _launched(self, grid_node, inputs: dict, resources) -> dict:
        """A node as the grid launches it: spec.json, its processes (`-m ...execution.launched`), its manifest."""
        from sparse2dense.execution.launch import LaunchSpec, run_launched
        from sparse2dense.planning.dag import make_node, stage_params

        node = make_node(grid_node.kind, f"gpu-check:{grid_node.kind}", stage_params(self.profile, grid_node, seed=0),
                         {})
        lines: list[str] = []
        # The node's process imports sparse2dense from this checkout.
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        root = self.work / "launched"
        spec = LaunchSpec(self.profile, node.spec(), inputs, root)
        with DeviceMemorySampler() as memory:
            manifest = run_launched(spec, resources, on_line=lines.append)
        folder = root / grid_node.kind / node.key
        history = json.loads((folder / "log_history.json").read_text()) if (folder / "log_history.json").exists() \
            else []
        runtime = [h.get("train_runtime") for h in history if "train_runtime" in h]
        record = {"node_key": node.key, "compute_s": manifest.get("compute_s"),
                  "train_runtime_s": runtime[-1] if runtime else None, "metrics": manifest.get("metrics"),
                  "world_size": manifest.get("world_size"), "placement": manifest.get("placement"),
                  "status": manifest.get("status"), "output_lines": len(lines), "_remove": [folder]}
        if self.device == "cuda":
            record["peak_device_used_gib"] = round(memory.peak / GIB, 3)
            record["device_used_before_gib"] = round(memory.baseline / GIB, 3)
            record["peak_note"] = ("device-wide memory in use (torch.cuda.mem_get_info, sampled every 0.2 s), all "
                                   "processes together; peak_gpu_* figures are this launcher's own allocations")
        return record

    def rollouts(self) -> dict:
        from sparse2dense.stages.rollouts import rollouts

        out = self.work / "rollouts"
        split = self.splits["distill"]
        split = type(split)(split.name, split.rows[: self.sizes["rollout_prompts"]], split.skipped)
        calls: list[dict] = []
        with generation_meter(calls):
            result = rollouts(self.profile, self.profile.rollouts, self.paths["teacher"], split, out, seed=0)
        self.state["rollouts"] = out
        return {"compute_s": result["compute_s"], "metrics": result["metrics"], "generation": calls,
                "tokens_per_s": _rate(calls)}

    def forward_kl(self) -> dict:
        from sparse2dense.stages.distill import forward_kl

        timer = step_timer()
        out = self.work / "forward_kl"
        result = forward_kl(self.profile, self.profile.forward_kl, self.paths["student"], self.state["rollouts"], out,
                            seed=0, callbacks=[timer])
        return self._trained(result, timer, out, sequences=self.sizes["fkl_batch"])

    def opd(self) -> dict:
        from sparse2dense.stages.distill import opd

        timer = step_timer()
        out = self.work / "opd"
        result = opd(self.profile, self.profile.opd, self.paths["teacher"], self.paths["student"],
                     self.splits["distill"], out, seed=0, callbacks=[timer])
        return self._trained(result, timer, out, prompts=self.sizes["opd_prompts"])

    def evaluate(self) -> dict:
        from sparse2dense.stages.evaluate import evaluate

        out = self.work / "evaluate"
        calls: list[dict] = []
        with generation_meter(calls):
            result = evaluate(self.profile, self.profile.evaluate, self.profile.data.benchmarks,
                              self.paths["student"], out, seed=0)
        return {"compute_s": result["compute_s"], "metrics": result["metrics"], "generation": calls,
                "tokens_per_s": _rate(calls)}

    def vllm(self) -> dict:
        """vLLM throughput on the student, in a child process (its engine takes GPU memory of its own)."""
        if not self.report.get("vllm_importable"):
            raise _Skip("vllm is not importable here: " + str(self.report.get("vllm_import_error")))
        if self.device != "cuda":
            raise _Skip("vLLM needs a GPU")
        result_path = self.work / "vllm.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--vllm-child", self.paths["student"],
                   "--work", str(self.work), "--json", str(result_path)] + (["--tiny"] if self.args.tiny else [])
        proc = subprocess.run(command, capture_output=True, text=True, timeout=max(60, self.budget_s))
        if proc.returncode != 0 or not result_path.exists():
            raise RuntimeError(f"vLLM child exited {proc.returncode}: " + "\n".join(
                (proc.stdout + proc.stderr).strip().splitlines()[-15:]))
        return json.loads(result_path.read_text())

    def _trained(self, result: dict, timer, out: Path, **batch) -> dict:
        model = Path(result["outputs"]["model"])
        return {"compute_s": result["compute_s"], "optimizer_steps": len(timer.seconds),
                "step_seconds": timer.seconds, "checkpoint_save_seconds": timer.saves,
                "metrics": result["metrics"], "batch": batch,
                "saved_model_gib": round(folder_bytes(model) / GIB, 3) if model.exists() else None,
                "_remove": [out]}

    # --- the whole run

    def run(self) -> dict:
        self.environment()
        self.log(f"device {self.report['device_name']}, precision {self.precision}, mode {self.mode}")
        self.save()
        steps = _steps(self.args)
        self.run_step("build", self.build)
        if not self.report["steps"]["build"]["ok"]:
            self.report["skipped"].extend(steps)
            self.save()
            return self.report
        for name in steps:
            self.run_step(name, getattr(self, name))
        if not self.args.keep and self.report["failed"] == []:
            shutil.rmtree(self.work / "models", ignore_errors=True)
        self.save()
        return self.report

    def _summarise(self) -> None:
        steps = self.report["steps"]
        summary: dict = {"transformers": {}}
        for step, role in (("evaluate", "student_1.7b"), ("rollouts", "teacher_8b")):
            calls = steps.get(step, {}).get("generation")
            if calls:
                summary["transformers"][role] = {
                    "tokens_per_s": _rate(calls), "tokens": sum(c["tokens"] for c in calls),
                    "sequences": sum(c["sequences"] for c in calls), "batch_size": calls[0]["batch_size"],
                    "max_new_tokens": calls[0]["max_new_tokens"], "from_step": step}
        vllm = steps.get("vllm", {})
        summary["vllm"] = {k: vllm[k] for k in ("tokens_per_s", "tokens", "sequences", "seconds_generate")
                           if k in vllm} if vllm.get("ok") else None
        self.report["generation"] = summary
        table = {}
        for name, record in steps.items():
            row = {"ok": record.get("ok"), "seconds": record.get("seconds")}
            for key in ("step_seconds", "peak_gpu_allocated_gib", "peak_device_used_gib", "planned_peak_gib",
                        "measured_over_planned", "tokens_per_s", "skipped", "error"):
                if record.get(key) is not None:
                    row[key] = record[key] if key != "error" else record[key][:200]
            table[name] = row
        self.report["summary"] = table


class _Skip(Exception):
    """A step that does not apply here (recorded as skipped, not failed)."""


def _rate(calls: list[dict]) -> float | None:
    seconds = sum(c["seconds"] for c in calls)
    return round(sum(c["tokens"] for c in calls) / seconds, 1) if seconds else None


def _steps(args) -> list[str]:
    names = [s.strip() for s in args.steps.split(",") if s.strip()] if args.steps else list(DEFAULT_STEPS)
    if "all" in names:
        names = list(STEPS)
    if args.launched:
        names = ["grpo_launched" if s == "grpo" else s for s in names]
        if "grpo_launched" not in names:
            names.insert(0, "grpo_launched")
    unknown = [s for s in names if s not in STEPS]
    if unknown:
        raise SystemExit(f"unknown steps {unknown}: expected some of {', '.join(STEPS)}")
    return list(dict.fromkeys(names))


def vllm_child(args) -> int:
    """`--vllm-child MODEL`: the project's VLLMGenerator on the student; writes its figures to --json."""
    from sparse2dense.config import GenerationSpec, HardwareSpec, SamplingSpec
    from sparse2dense.generation import VLLMGenerator

    sizes = SIZES["tiny" if args.tiny else "full"]
    rng = random.Random(0)
    convs = [[{"role": "user", "content": problem_text(rng, 60) + "\n\n" + PROMPT_SUFFIX}]
             for _ in range(sizes["vllm_prompts"])]
    start = time.perf_counter()
    generator = VLLMGenerator(args.vllm_child, GenerationSpec(backend="vllm", gpu_memory_utilization=0.6),
                              HardwareSpec(device="cuda", precision="bf16"), {"enable_thinking": False}, seed=0)
    engine_s = time.perf_counter() - start
    sampling = SamplingSpec(temperature=0.7, top_p=0.8, top_k=20, max_new_tokens=sizes["vllm_tokens"])
    start = time.perf_counter()
    out = generator.generate(convs, sampling, n=sizes["vllm_samples"])
    seconds = time.perf_counter() - start
    tokens = sum(s.num_tokens for group in out for s in group)
    generator.close()
    import importlib.metadata as md

    Path(args.json).write_text(json.dumps({
        "vllm_version": md.version("vllm"), "engine_start_s": round(engine_s, 2), "seconds_generate": round(seconds, 3),
        "sequences": sum(len(g) for g in out), "tokens": tokens, "max_new_tokens": sizes["vllm_tokens"],
        "tokens_per_s": round(tokens / seconds, 1) if seconds else None}))
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny shapes and lengths (tests; runs on CPU in seconds)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="default bf16 on cuda (fp32 master weights, bf16 autocast), fp32 on cpu")
    p.add_argument("--backend", choices=("transformers", "vllm", "auto"), default="transformers",
                   help="generation inside the stages (the vllm step measures vLLM on its own either way)")
    p.add_argument("--launched", action="store_true",
                   help="run the GRPO step as a launched node (-m sparse2dense.execution.launched) instead of inline")
    p.add_argument("--steps", default=None, help=f"comma-separated, from {', '.join(STEPS)}, or all "
                                                 f"(default {','.join(DEFAULT_STEPS)})")
    p.add_argument("--completion-tokens", type=int, default=None, help="override the completion length")
    p.add_argument("--budget-s", type=float, default=None,
                   help="no step starts after this many seconds (default 360 full, 300 tiny)")
    p.add_argument("--work", default=None,
                   help="models, data and stage outputs, deleted first (default: s2d-gpu-check in $TMPDIR or /tmp, "
                        "or /dev/shm where only it has room)")
    default_json = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else \
        Path(os.environ.get("TMPDIR", "/tmp")) / "s2d-gpu-check.json"
    p.add_argument("--json", default=str(default_json),
                   help="where the JSON is written (default $OUT/gpu_check.json when $OUT is set)")
    p.add_argument("--keep", action="store_true", help="keep the models and stage outputs in --work")
    p.add_argument("--vllm-child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.vllm_child:
        return vllm_child(args)
    # stdout carries the report alone: libraries that log to stdout (DeepSpeed does) go to stderr
    with contextlib.redirect_stdout(sys.stderr):
        report = Check(args).run()
    print(json.dumps(report, indent=2, default=str), flush=True)
    return 0 if not report["failed"] and "build" in report["ran"] else 1


if __name__ == "__main__":
    sys.exit(main())
