"""Stage 0 lands where it aims: the checked weights closest to the dev target, the same after a crash."""

import hashlib
from pathlib import Path

import pytest
from transformers import TrainerCallback

from sparse2dense.config import load_profile
from sparse2dense.stages.base import prepare_base

pytestmark = pytest.mark.slow
BAND = 0.05  # the smoke teacher's dev set has 64 problems: 3 of them


class _CrashAt(TrainerCallback):
    """A crash at `step`, after a checkpoint and after the closest check the run will keep."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("crash")


def _weights(result) -> str:
    return hashlib.sha256((Path(result["outputs"]["model"]) / "model.safetensors").read_bytes()).hexdigest()


def test_the_teacher_lands_within_the_band_and_a_crashed_run_resumes_to_the_same_weights(tmp_path):
    smoke = load_profile("smoke")
    target = smoke.models.teacher.pretrain.target_accuracy
    whole = prepare_base(smoke, "teacher", smoke.models.teacher, tmp_path / "whole", smoke.seed)
    metrics = whole["metrics"]
    assert metrics["dev_target"] == target and abs(metrics["dev_accuracy"] - target) <= BAND
    assert metrics["kept_step"] <= metrics["steps"] and metrics["dev_checks"] > 0

    kept, end = metrics["kept_step"], metrics["steps"]
    crash = end - 1 if end - 1 > kept else end  # past the kept check, before the stop
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="crash"):
        prepare_base(smoke, "teacher", smoke.models.teacher, out, smoke.seed, callbacks=[_CrashAt(crash)])
    resumed = prepare_base(smoke, "teacher", smoke.models.teacher, out, smoke.seed)
    assert resumed["resumed_from_step"] is not None and resumed["resumed_from_step"] < kept
    assert resumed["metrics"] | {"dev_checks": None} == metrics | {"dev_checks": None}
    assert _weights(resumed) == _weights(whole)
