"""What every stage shares: timing, checkpoints, the trainer settings, the result it returns.

Every training stage runs a `transformers.Trainer` (TRL's, or ours for supervised losses), so one
process or many under `accelerate launch` run the same code, and every rank resumes from the
same checkpoint. Only the main process writes the model and the files the node leaves behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

log = logging.getLogger("sparse2dense")

MODEL_DIR = "model"
CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"  # the last file a checkpoint gets: its presence means complete


@contextmanager
def stopwatch():
    """Yields a dict whose 'seconds' is filled in when the block ends."""
    timing = {"seconds": 0.0}
    start = time.perf_counter()
    try:
        yield timing
    finally:
        timing["seconds"] = time.perf_counter() - start


class DecayEveryParameter:
    """Weight decay on every parameter, norms and biases too, as the authors' verl optimizer applies it
    (transformers' Trainer skips them). Mix in before the trainer class."""

    def get_decay_parameter_names(self, model) -> list[str]:
        return [name for name, _ in model.named_parameters()]


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


def last_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint; incomplete ones (a kill or a full disk mid-write) are removed."""
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return None
    while (path := get_last_checkpoint(str(folder))) is not None:
        if _complete(Path(path)):
            return path
        log.warning("removing incomplete checkpoint %s (it was being written when the node stopped)", path)
        if is_main_process():
            shutil.rmtree(path, ignore_errors=True)
        else:
            return None  # the main process cleans up; the others wait for its choice at the next launch
    return None


def _complete(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return False
    return any(checkpoint.glob("*.safetensors")) or any(checkpoint.glob("pytorch_model*"))


def checkpoint_step(path: str | None) -> int | None:
    return int(path.rsplit("-", 1)[1]) if path else None


def result(*, model: Path | str | None = None, metrics: dict | None = None, labels_used: int = 0,
           labels_on: str | None = None, compute_s: float, resumed_from_step: int | None = None,
           placement: dict | None = None, **outputs) -> dict:
    """The small manifest a stage returns; the DAG layer adds keys, lineage and tracking."""
    files = {k: str(v) for k, v in outputs.items()}
    if model is not None:
        files["model"] = str(model)
    return {
        "outputs": files,
        "metrics": metrics or {},
        "labels_used": labels_used,
        "labels_on": labels_on,
        "compute_s": round(compute_s, 3),
        "resumed_from_step": resumed_from_step,
        "world_size": world_size(),
        "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", 1)),  # processes per machine
        "placement": placement,  # training nodes: strategy, shards and dtypes as measured (stages.sharding)
    }


def write_json(path: Path, payload) -> None:
    """Write-then-rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def _checkpointing_field() -> str:
    """transformers renamed `gradient_checkpointing` to `activation_checkpointing` (after 5.17, which lacks it)."""
    from dataclasses import fields

    from transformers import TrainingArguments

    names = {f.name for f in fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


_CHECKPOINTING = _checkpointing_field()


def trainer_args(spec, hardware, out: Path, seed: int, steps: int, per_step: int, micro_batch: int) -> dict:
    """TrainingArguments shared by every trainer: checkpoints under `<out>/checkpoints`.

    `per_step` items per optimizer step, all processes together, `micro_batch` per process and pass;
    the accumulation makes up the rest, so a step means the same on one process or many.
    `steps` <= 0 lets the trainer run whole epochs instead.
    """
    from ..models import device_for

    cpu = device_for(hardware) == "cpu"
    accumulation = per_step // (micro_batch * world_size())
    if accumulation < 1 or accumulation * micro_batch * world_size() != per_step:
        raise ValueError(f"{per_step} per step does not split into micro-batches of {micro_batch} "
                         f"over {world_size()} processes")
    return dict(
        output_dir=str(out / CHECKPOINTS), max_steps=steps if steps > 0 else -1, seed=seed, data_seed=seed,
        per_device_train_batch_size=micro_batch, gradient_accumulation_steps=accumulation,
        learning_rate=spec.learning_rate, weight_decay=spec.weight_decay, max_grad_norm=spec.max_grad_norm,
        warmup_steps=spec.warmup_ratio, lr_scheduler_type="constant_with_warmup",
        save_steps=spec.save_steps, save_total_limit=1, logging_steps=spec.logging_steps,
        # bf16 autocast over the fp32 weights the stages load: the optimizer updates fp32 master weights.
        use_cpu=cpu, bf16=hardware.precision == "bf16",
        **{_CHECKPOINTING: hardware.gradient_checkpointing}, report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, ddp_backend="gloo" if cpu and world_size() > 1 else None,
    )


def log_summary(history: list[dict], key: str) -> dict:
    """First and last logged value of a training metric (the curve itself goes to tracking)."""
    values = [h[key] for h in history if key in h]
    return {f"{key}_first": values[0], f"{key}_last": values[-1]} if values else {}


def vllm_args(profile, tokenizer=None, prompts=(), completion_length: int = 0) -> dict:
    """TRL generates with vLLM colocated in each training rank when the profile's backend resolves to it.

    The engine's context is bounded to the longest prompt plus the completion limit: left unset, vLLM sizes
    its KV cache for the model's own context (40,960 tokens for Qwen3, 131,072 for Llama) inside its share.
    """
    from ..generation import resolve_backend
    from ..models import longest_prompt

    g = profile.generation
    use = resolve_backend(g, profile.hardware, colocated=True) == "vllm"
    context = longest_prompt(tokenizer, prompts, profile.data.chat_template_kwargs) + completion_length \
        if use and tokenizer is not None and prompts else None
    return dict(use_vllm=use, vllm_mode="colocate", vllm_max_model_length=context,
                vllm_gpu_memory_utilization=g.colocate_gpu_memory_utilization,
                vllm_tensor_parallel_size=g.colocate_tensor_parallel_size, vllm_enable_sleep_mode=g.sleep_mode)


def run_trainer(trainer, out: Path) -> tuple[list[dict], str | None]:
    """Train (resuming the last complete checkpoint in `out`), save the model; returns (log history, resumed from).

    Every rank calls save_model (sharded weights are gathered collectively); only the main process writes.
    """
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # logs go to the tracking callback, not stdout
    resume = last_checkpoint(out)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(out / MODEL_DIR))
    if trainer.args.should_save:
        write_json(out / "log_history.json", trainer.state.log_history)
    return trainer.state.log_history, resume

