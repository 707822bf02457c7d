"""FSDP2 as the paper's runs need it, on GPUs and on CPU processes alike (and ZeRO-3's placement facts).

- accelerate turns FSDP on only for accelerator devices; here `strategy: fsdp2` on CPU processes
  (gloo) takes the same path, so the sharded code runs, and is tested, without a GPU.
- Gradients are reduced in fp32 under bf16 compute (as verl does), and every micro-batch
  reduce-scatters its gradients, so accumulation happens on the fp32 shards instead of on a full
  bf16 copy of the gradients on every rank.
- Frozen models (the OPD and forward-KL teachers) are sharded as the student is: per decoder layer,
  read once by the main process and handed out in shards.
- Checkpoints (for resuming) are written as shards by every rank; the final model is gathered once
  into one consolidated safetensors file, what the next node and `from_pretrained` read.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import TrainerCallback

from .. import models


class Sharded:
    """Mix in before the trainer class: FSDP2 on CPU too, fp32 reduction, placement in `placement()`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._probe = _GradientProbe()
        self.add_callback(self._probe)

    def create_accelerator_and_postprocess(self):
        if models.fsdp_enabled():
            # Reduce-scatter every micro-batch: gradients accumulate sharded, in fp32.
            self.args.accelerator_config.gradient_accumulation_kwargs = {"sync_each_batch": True}
        with _fsdp_on_cpu():
            super().create_accelerator_and_postprocess()
        if self.is_fsdp_enabled:
            from torch.distributed.fsdp import MixedPrecisionPolicy

            compute = torch.bfloat16 if self.args.bf16 else None
            self.accelerator.state.fsdp_plugin.mixed_precision_policy = MixedPrecisionPolicy(
                param_dtype=compute, reduce_dtype=torch.float32)

    def save_model(self, output_dir=None, _internal_call: bool = False):
        """The final model whole (a checkpoint's own save stays sharded: `_internal_call`)."""
        if not _internal_call and self.is_deepspeed_enabled:
            super().save_model(output_dir, _internal_call)
            if (state := self._zero3_fp32_weights()) is not None:
                self.model.save_pretrained(output_dir or self.args.output_dir, state_dict=state)
            return None
        if _internal_call or not self.is_fsdp_enabled:
            return super().save_model(output_dir, _internal_call)
        plugin = self.accelerator.state.fsdp_plugin
        sharded = plugin.state_dict_type
        plugin.set_state_dict_type("FULL_STATE_DICT")
        try:
            super().save_model(output_dir, _internal_call)
        finally:
            plugin.set_state_dict_type(sharded)

    def _zero3_fp32_weights(self) -> dict | None:
        """ZeRO-3's fp32 master weights, gathered one parameter at a time, kept by the main process only.

        DeepSpeed's own save gathers the bf16 copy, which rounds away any update smaller than bf16's
        step (a learning rate of 1e-6 moves no weight at all)."""
        from deepspeed.utils import safe_get_full_fp32_param

        state = {}
        for name, param in self.model.named_parameters():
            full = safe_get_full_fp32_param(param)  # a collective: every rank takes part
            if self.args.should_save:
                state[name] = full.detach().cpu()
        return state if self.args.should_save else None

    def placement(self, teacher=None) -> dict:
        """How the models were laid out, as measured on this rank (the main one writes it)."""
        strategy = "fsdp2" if self.is_fsdp_enabled else "zero3" if self.is_deepspeed_enabled else "replicated"
        facts = {"strategy": strategy, "student_local_fraction": local_fraction(self.model), **self._probe.facts}
        if self.is_deepspeed_enabled:
            facts |= deepspeed_dtypes(self.model_wrapped)
        if teacher is not None:
            facts["teacher_local_fraction"] = local_fraction(teacher)
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            facts["checkpoints_read_per_rank"] = _per_rank(len(models.CHECKPOINTS_READ))
        return facts | {"peak_rss_mib": peak_rss_mib()}


def _per_rank(value) -> list:
    """`value` from every rank, in rank order (a collective: every rank calls it)."""
    values = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(values, value)
    return values


def peak_rss_mib() -> int:
    """This process's peak resident memory so far (a launched node's rank; inline, the grid's whole process)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux


def shard_frozen(model, accelerator):
    """A frozen model sharded like the trained one: accelerate's FSDP2 preparation, which (with
    cpu_ram_efficient_loading) keeps the full weights on the main process only and broadcasts them."""
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model

    model.requires_grad_(False)
    return fsdp2_prepare_model(accelerator, model).eval()


def local_fraction(model) -> float:
    """This rank's share of the model's parameters: 1.0 when replicated, 1/world size when fully sharded."""
    local = total = 0
    for p in model.parameters():
        if hasattr(p, "ds_tensor"):  # ZeRO-3: the parameter is a placeholder, its partition in ds_tensor
            local, total = local + p.ds_tensor.numel(), total + p.ds_numel
            continue
        total += p.numel()
        local += p.to_local().numel() if isinstance(p, torch.distributed.tensor.DTensor) else p.numel()
    return round(local / total, 4) if total else 1.0


def deepspeed_dtypes(engine) -> dict:
    """ZeRO-3's gradients as its engine keeps them: partitioned (never whole in `.grad`), accumulated and
    reduced in the dtypes its config sets."""
    model_dtype, accumulate = engine.get_data_types()
    name = lambda dtype: str(dtype).removeprefix("torch.")  # noqa: E731
    return {"gradients_sharded": bool(engine.zero_optimization_partition_gradients()),
            "gradient_dtype": name(accumulate), "compute_dtypes": [name(model_dtype)],
            "reduce_dtypes": [name(engine.communication_data_type)]}


def reduction_dtypes(model) -> dict:
    """The compute and reduction dtypes of the FSDP2 groups actually in place in `model`."""
    from torch.distributed.fsdp import FSDPModule

    compute, reduce = set(), set()
    for module in model.modules():
        if isinstance(module, FSDPModule):
            group = module._get_fsdp_state()._fsdp_param_group
            if group is not None:
                compute.add(str(group.mp_policy.param_dtype or "float32").removeprefix("torch."))
                reduce.add(str(group.mp_policy.reduce_dtype or "float32").removeprefix("torch."))
    return {"compute_dtypes": sorted(compute), "reduce_dtypes": sorted(reduce)}


class _GradientProbe(TrainerCallback):
    """At the first optimizer step: the gradients' layout and the FSDP groups' dtypes."""

    def __init__(self):
        self.facts: dict = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.facts or model is None:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        sharded = [isinstance(g, torch.distributed.tensor.DTensor) for g in grads]
        self.facts = {"gradients_sharded": bool(grads) and all(sharded),
                      "gradient_dtype": str(grads[0].dtype).removeprefix("torch.") if grads else None,
                      **reduction_dtypes(model)}


@contextmanager
def _fsdp_on_cpu():
    """Let accelerate's state take FSDP on CPU processes (it sets FSDP only from the accelerator types)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(state, *args, fsdp_plugin=None, **kwargs):
        original(state, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and state.distributed_type == DistributedType.MULTI_CPU:
            state.distributed_type = DistributedType.FSDP
            if state._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(state._mixed_precision)
            state.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    AcceleratorState.__init__ = init
    try:
        yield
    finally:
        AcceleratorState.__init__ = original
