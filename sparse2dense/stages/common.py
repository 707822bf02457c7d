"""What every stage shares: timing, checkpoint discovery, the result it returns."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint

MODEL_DIR = "model"
CHECKPOINTS = "checkpoints"


@contextmanager
def stopwatch():
    """Yields a dict whose 'seconds' is filled in when the block ends."""
    timing = {"seconds": 0.0}
    start = time.perf_counter()
    try:
        yield timing
    finally:
        timing["seconds"] = time.perf_counter() - start


def last_checkpoint(out: Path) -> str | None:
    folder = out / CHECKPOINTS
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def checkpoint_step(path: str | None) -> int | None:
    return int(path.rsplit("-", 1)[1]) if path else None


def result(*, model: Path | str | None = None, metrics: dict | None = None, labels_used: int = 0,
           labels_on: str | None = None, compute_s: float, resumed_from_step: int | None = None,
           **outputs) -> dict:
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


def trainer_args(spec, hardware, out: Path, seed: int, steps: int) -> dict:
    """TrainingArguments shared by the TRL trainers: checkpoints under `<out>/checkpoints`."""
    from ..models import device_for

    cpu = device_for(hardware) == "cpu"
    return dict(
        output_dir=str(out / CHECKPOINTS), max_steps=steps, seed=seed, data_seed=seed,
        learning_rate=spec.learning_rate, weight_decay=spec.weight_decay, max_grad_norm=spec.max_grad_norm,
        warmup_steps=int(spec.warmup_ratio * steps), lr_scheduler_type="constant_with_warmup",
        save_steps=spec.save_steps, save_total_limit=1, logging_steps=spec.logging_steps,
        use_cpu=cpu, bf16=hardware.precision == "bf16" and not cpu,
        activation_checkpointing=hardware.gradient_checkpointing, report_to="none",
        disable_tqdm=True, dataloader_num_workers=0,
    )


def log_summary(history: list[dict], key: str) -> dict:
    """First and last logged value of a training metric (the curve itself goes to tracking)."""
    values = [h[key] for h in history if key in h]
    return {f"{key}_first": values[0], f"{key}_last": values[-1]} if values else {}


def vllm_args(profile) -> dict:
    """TRL generates with colocated vLLM when the profile's backend resolves to it."""
    from ..generation import resolve_backend

    use_vllm = resolve_backend(profile.generation, profile.hardware) == "vllm"
    return dict(use_vllm=use_vllm, vllm_mode="colocate",
                vllm_gpu_memory_utilization=profile.generation.gpu_memory_utilization,
                vllm_tensor_parallel_size=profile.generation.tensor_parallel_size)


def run_trainer(trainer, tokenizer, out: Path) -> tuple[list[dict], str | None]:
    """Train (resuming the last checkpoint in `out`), save the model; returns (log history, resumed from)."""
    from transformers.trainer_callback import PrinterCallback

    from ..models import save_model

    trainer.remove_callback(PrinterCallback)  # logs go to the tracking callback, not stdout
    resume = last_checkpoint(out)
    trainer.train(resume_from_checkpoint=resume)
    save_model(trainer.model, tokenizer, out / MODEL_DIR)
    write_json(out / "log_history.json", trainer.state.log_history)
    return trainer.state.log_history, resume
