"""Typed profile and grid configuration, loaded from YAML and checked before any compute.

A profile says which models and data an experiment uses and how every stage runs; a grid
says which arms (chains of stages) to compare. Every schema forbids unknown keys, so a typo
fails with the field's path instead of being silently ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

PositiveInt = Annotated[int, Field(gt=0)]
Probability = Annotated[float, Field(gt=0, le=1)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the file and the field."""


def is_local(name: str) -> bool:
    """A model `name` that is a folder on disk (written as a path, or existing) rather than a hub id."""
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


# --- training ---


class TrainSpec(Strict):
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    save_steps: PositiveInt = 50
    logging_steps: PositiveInt = 10


class PretrainSpec(TrainSpec):
    """Stage 0 for toy models: supervised training on worked solutions until a dev accuracy."""

    target_accuracy: Probability
    max_steps: PositiveInt
    batch_size: PositiveInt = 64
    learning_rate: float = Field(3e-3, gt=0)
    save_steps: PositiveInt = 100
    eval_every: PositiveInt = 100
    dev_size: PositiveInt = 200


# --- models ---------------------------------------------------------------------------


class ToyArch(Strict):
    """A tiny Qwen3 built from scratch (toy profiles only)."""

    hidden_size: PositiveInt
    num_layers: PositiveInt
    num_heads: PositiveInt
    num_kv_heads: PositiveInt
    intermediate_size: PositiveInt

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must be divisible by num_heads, and num_heads by num_kv_heads")
        return self


class ModelSpec(Strict):
    source: Literal["toy", "hub"]
    name: str | None = Field(None, description="hub id or local folder (hub source)")
    revision: str | None = Field(None, description="hub branch, tag or commit; the resolved commit enters the key")
    trust_remote_code: bool = Field(False, description="run code shipped with the checkpoint (off unless you trust it)")
    vocab_size: PositiveInt | None = Field(None, description="declared so mismatched pairs fail before loading")
    arch: ToyArch | None = None
    pretrain: PretrainSpec | None = None

    @model_validator(mode="after")
    def _source_fields(self):
        if self.source == "hub" and not self.name:
            raise ValueError("a hub model needs 'name' (hub id or local folder)")
        if self.source == "toy" and (self.arch is None or self.pretrain is None):
            raise ValueError("a toy model needs 'arch' and 'pretrain'")
        return self


class ModelsSpec(Strict):
    teacher: ModelSpec
    student: ModelSpec

    @property
    def trust_remote_code(self) -> bool:
        """Derived checkpoints keep their base's code, so one model that needs it makes every load need it."""
        return self.teacher.trust_remote_code or self.student.trust_remote_code

    @model_validator(mode="after")
    def _same_vocabulary(self):
        t, s = self.teacher, self.student
        if t.source != s.source:
            raise ValueError("teacher and student must both be toy or both hub models (shared vocabulary)")
        if t.vocab_size and s.vocab_size and t.vocab_size != s.vocab_size:
            raise ValueError(
                f"teacher and student vocabularies differ ({t.vocab_size} vs {s.vocab_size}): "
                "token-level distillation needs one vocabulary"
            )
        return self


# --- data -----------------------------------------------------------------------------


class ToyTaskSpec(Strict):
    """+/- chains: a `first_digits`-digit number, then `min_ops`..`max_ops` one-digit operands."""

    first_digits: PositiveInt = 2
    min_ops: PositiveInt = 2
    max_ops: PositiveInt = 4
    operand_max: Annotated[int, Field(ge=1, le=9)] = 9
    allow_negative: bool = False

    @model_validator(mode="after")
    def _ops_range(self):
        if self.min_ops > self.max_ops:
            raise ValueError(f"min_ops ({self.min_ops}) must be <= max_ops ({self.max_ops})")
        return self

    @property
    def capacity(self) -> int:
        """An upper bound on the number of distinct problems these knobs can generate."""
        firsts = 10**self.first_digits - (10 ** (self.first_digits - 1) if self.first_digits > 1 else 0)
        return firsts * sum((2 * self.operand_max) ** k for k in range(self.min_ops, self.max_ops + 1))


class BenchmarkSpec(Strict):
    name: str
    source: Literal["toy", "math500", "aime24", "aime25"]
    size: PositiveInt | None = Field(None, description="first N problems; all when omitted")
    path: str | None = Field(None, description="local copy in the hub layout")


class DataSpec(Strict):
    source: Literal["toy", "hub"]
    toy: ToyTaskSpec | None = None
    pool_size: PositiveInt | None = Field(None, description="toy problems generated for training splits")
    train_dataset: Literal["dapo-math-17k", "dapo-math-17k-dedup"] = Field(
        "dapo-math-17k", description="the raw set (deduplicated here) or the authors' deduplicated copy")
    train_path: str | None = Field(None, description="local copy of train_dataset in its hub layout")
    split_seed: int = 42
    heldout_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    labeled_budget: PositiveInt = Field(description="L: labeled problems spent on the first RL stage")
    heldout_budget: PositiveInt = Field(description="H: held-out labeled problems for Stage 3")
    distill_prompts: PositiveInt = Field(description="unlabeled prompts for rollouts and OPD")
    prompt_suffix: str = Field("", description="appended to the problem after a blank line, as the authors do")
    checker: Literal["math-verify", "strict"] = Field(
        "math-verify", description="how a boxed answer is compared: math-verify (symbolic, lenient) or strict "
                                   "(the authors' MATH-style string normalisation)")
    system_prompt: str | None = None
    chat_template_kwargs: dict[str, bool | str | int] = Field(
        default_factory=dict, description="e.g. {enable_thinking: false} for Qwen3")
    benchmarks: list[BenchmarkSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _sizes(self):
        if self.source == "toy":
            if self.toy is None or self.pool_size is None:
                raise ValueError("toy data needs 'toy' and 'pool_size'")
            heldout = int(self.pool_size * self.heldout_fraction)
            train = self.pool_size - heldout
            _fits("labeled_budget", self.labeled_budget, "training split", train)
            _fits("distill_prompts", self.distill_prompts, "training split", train)
            _fits("heldout_budget", self.heldout_budget, "held-out split", heldout)
            wanted = self.pool_size + sum(b.size or 600 for b in self.benchmarks if b.source == "toy")
            if wanted > self.toy.capacity // 2:
                raise ValueError(f"pool_size plus toy benchmark sizes ({wanted}) is too many distinct problems for "
                                 f"the toy task knobs (at most about {self.toy.capacity // 2}): widen data.toy")
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names must be unique, got {names}")
        return self


def _fits(field: str, value: int, pool: str, size: int) -> None:
    if value > size:
        raise ValueError(f"{field} = {value} is larger than the {pool} ({size} problems)")


# --- stages ---------------------------------------------------------------------------


class SampledLength(Strict):
    """How long a trainer that samples its batches runs: optimizer steps, or epochs over its node's own split."""

    steps: PositiveInt | None = Field(None, description="optimizer steps")
    epochs: PositiveInt | None = Field(None, description="passes over the node's own split in whole sampled batches "
                                                         "(the authors' drop_last); sets steps from the split's size")

    @model_validator(mode="after")
    def _one_length(self):
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("set either steps or epochs (passes over the node's split)")
        return self

    def sampled_batch(self) -> tuple[int, int]:
        """(prompts per sampled batch, optimizer steps per batch)."""
        raise NotImplementedError

    def batches_in(self, problems: int) -> int:
        return problems // self.sampled_batch()[0]

    def steps_over(self, problems: int) -> int:
        """Optimizer steps on a split of `problems`: `steps`, or `epochs` x whole batches x steps per batch."""
        if self.steps is not None:
            return self.steps
        return self.epochs * self.batches_in(problems) * self.sampled_batch()[1]


class GRPOSpec(TrainSpec, SampledLength):
    """Defaults are the authors' (DAPO-style clipping, dual clip, token-mean loss, no KL term)."""

    prompts_per_step: PositiveInt = Field(description="prompts per optimizer step (the authors' mini-batch)")
    steps_per_generation: PositiveInt = Field(1, description="optimizer steps per sampled batch")
    num_generations: Annotated[int, Field(ge=2)] = 8
    micro_batch: PositiveInt = Field(description="completions per forward/backward pass, per process")
    temperature: float = Field(1.0, gt=0)
    max_completion_length: PositiveInt
    epsilon: float = Field(0.2, gt=0)
    epsilon_high: float = Field(0.28, gt=0)
    dual_clip: float | None = Field(None, gt=1, description="verl's clip_ratio_c: caps the ratio where A < 0 "
                                                            "(TRL's delta)")
    importance_sampling_correction: bool = Field(
        False, description="TRL's correction for vLLM's sampling mismatch (TRL turns it on by default)")
    loss_type: Literal["dapo", "grpo", "dr_grpo", "bnpo"] = "dapo"
    beta: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _batching(self):
        completions = self.prompts_per_step * self.num_generations
        if completions % self.micro_batch:
            raise ValueError(
                f"micro_batch ({self.micro_batch}) must divide prompts_per_step x num_generations ({completions})"
            )
        if self.dual_clip is not None and self.dual_clip <= 1 + self.epsilon_high:
            raise ValueError(f"dual_clip ({self.dual_clip}) must exceed 1 + epsilon_high ({1 + self.epsilon_high})")
        return self

    def batch_units(self) -> tuple[str, int]:
        """The per-step count a launch's world size must divide, for the batching check."""
        micro_batches = self.prompts_per_step * self.num_generations // self.micro_batch
        return "prompts_per_step x num_generations / micro_batch", micro_batches

    def sampled_batch(self) -> tuple[int, int]:
        return self.prompts_per_step * self.steps_per_generation, self.steps_per_generation


class SamplingSpec(Strict):
    temperature: float = Field(1.0, ge=0, description="0 = greedy")
    top_p: Probability = 1.0
    top_k: int = Field(0, ge=0, description="0 = off")
    max_new_tokens: PositiveInt


class RolloutsSpec(SamplingSpec):
    samples_per_prompt: PositiveInt = 1


class ForwardKLSpec(TrainSpec):
    target: Literal["soft", "hard"] = "soft"
    epochs: PositiveInt = 1
    batch_size: PositiveInt = Field(description="sequences per optimizer step, all processes together")
    micro_batch: PositiveInt = Field(description="sequences per forward/backward pass, per process")
    max_length: PositiveInt
    probe_size: int = Field(64, ge=0, description="rollouts on which the KL is measured before and after (0 = off)")

    @model_validator(mode="after")
    def _batching(self):
        if self.batch_size % self.micro_batch:
            raise ValueError(f"micro_batch ({self.micro_batch}) must divide batch_size ({self.batch_size})")
        return self

    def batch_units(self) -> tuple[str, int]:
        return "batch_size / micro_batch", self.batch_size // self.micro_batch


class OPDSpec(TrainSpec, SampledLength):
    """On-policy distillation: student samples, per-token reverse KL to the teacher."""

    prompts_per_step: PositiveInt = Field(description="prompts per optimizer step, all processes together")
    micro_batch: PositiveInt = Field(description="prompts per forward/backward pass, per process")
    temperature: float = Field(1.0, gt=0)
    top_k: int = Field(0, ge=0, description="0 = off; 1 samples the student's likeliest token, the same on every "
                                            "rank whatever its seed (how a test compares world sizes)")
    max_completion_length: PositiveInt
    probe_size: int = Field(64, ge=0, description="prompts whose student samples measure the reverse KL before "
                                                  "and after (0 = off: the first and last logged loss stand in)")

    @model_validator(mode="after")
    def _batching(self):
        if self.prompts_per_step % self.micro_batch:
            raise ValueError(f"micro_batch ({self.micro_batch}) must divide prompts_per_step ({self.prompts_per_step})")
        return self

    def batch_units(self) -> tuple[str, int]:
        return "prompts_per_step / micro_batch", self.prompts_per_step // self.micro_batch

    def sampled_batch(self) -> tuple[int, int]:
        return self.prompts_per_step, 1


class EvaluateSpec(SamplingSpec):
    samples: PositiveInt = Field(description="n completions per problem: avg@n")
    pass_at: list[PositiveInt] = Field(default_factory=lambda: [1])

    @model_validator(mode="after")
    def _k_within_samples(self):
        too_big = [k for k in self.pass_at if k > self.samples]
        if too_big:
            raise ValueError(f"pass_at k={too_big} is larger than samples ({self.samples})")
        if self.temperature == 0 and self.samples > 1:
            raise ValueError("greedy decoding (temperature 0) gives identical samples: set samples to 1")
        return self


class GenerationSpec(Strict):
    backend: Literal["auto", "transformers", "vllm"] = "auto"
    colocated_backend: Literal["auto", "transformers", "vllm"] | None = Field(
        None, description="what GRPO and OPD sample with (vllm: TRL's colocated vLLM); omitted: backend. vLLM's "
                          "CPU build cannot take the weights TRL syncs into it after each update")
    batch_size: PositiveInt = 64
    gpu_memory_utilization: Probability = Field(0.85, description="standalone engines (rollouts, evaluate)")
    tensor_parallel_size: PositiveInt = Field(1, description="standalone engines (rollouts, evaluate)")
    colocate_gpu_memory_utilization: Probability = Field(
        0.3, description="vLLM inside GRPO and OPD, beside the policy, its optimizer and the teacher")
    colocate_tensor_parallel_size: PositiveInt = Field(1, description="must divide the training node's processes")
    sleep_mode: bool = Field(False, description="colocated vLLM releases its memory while the trainer steps")

    def configured(self, colocated: bool = False) -> str:
        """The backend asked for (`auto` unresolved) by rollouts and evaluate, or (`colocated`) GRPO and OPD."""
        return (self.colocated_backend or self.backend) if colocated else self.backend


class HardwareSpec(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: bf16 compute over fp32 master weights (trained models), bf16 weights (frozen)")
    num_threads: PositiveInt | None = Field(None, description="torch CPU threads; all cores when omitted. In every "
                                                              "CPU node's key: CPU kernels reduce in an order that "
                                                              "depends on it")
    gradient_checkpointing: bool = False
    @property
    def threads(self) -> int | None:
        """The CPU threads a result computed on the CPU depends on; None where the device is a GPU."""
        return None if self.device == "cuda" else self.num_threads or os.cpu_count() or 1

    # What `s2d plan` assumes of the accelerator (planning only: no node's key or behaviour depends on these).
    gpu_name: str = Field("H100-80GB", description="the accelerator the compute plan assumes")
    gpu_peak_tflops: float = Field(989.0, gt=0, description="dense bf16 peak per device in TFLOP/s "
                                                            "(H100 and H200 SXM: 989)")
    gpu_memory_gib: float = Field(80.0, gt=0, description="memory per device in GiB (H100: 80, H200: 141 GB = 131)")
    train_utilization: Probability = Field(0.35, description="fraction of the peak that training and scoring "
                                                             "passes achieve (MFU)")
    generation_utilization: Probability = Field(0.15, description="fraction of the peak that sampling's matrix "
                                                                  "products achieve (the compute bound)")
    gpu_memory_bandwidth_gbs: float = Field(3350.0, gt=0, description="memory bandwidth per device in GB/s "
                                                                      "(H100 SXM: 3350, H200: 4800)")
    decode_bandwidth_utilization: Probability = Field(
        0.6, description="fraction of the bandwidth a decode step achieves (the memory bound: each step reads "
                         "the weights and the KV cache of the sequences in flight)")


# --- how nodes run ----------------------------------------------------------------------

TRAINING_KINDS = ("base", "grpo", "replay", "forward_kl", "opd")
NODE_KINDS = (*TRAINING_KINDS, "rollouts", "evaluate")
COLOCATED_KINDS = ("grpo", "replay", "opd")  # sample inside their trainer: `generation.colocated_backend`
SAMPLING_KINDS = (*COLOCATED_KINDS, "rollouts", "evaluate")


class ResourceSpec(Strict):
    """How one node kind runs: inline in the grid's process, or launched as its own process group."""

    launch: Literal["inline", "process", "accelerate"] = Field(
        "inline", description="inline: in the grid's process; process: one child process; accelerate: "
                              "`accelerate launch` with `processes` per machine")
    processes: PositiveInt = Field(1, description="training processes per machine (accelerate)")
    machines: PositiveInt = Field(1, description="machines for one node, launched together as a gang")
    gpus: int = Field(0, ge=0, description="GPUs per machine (Ray's num_gpus; the devices the node sees)")
    strategy: Literal["ddp", "zero3", "fsdp2"] = Field("ddp", description="how accelerate shards the models")
    offload: bool = Field(False, description="parameters and optimizer state on CPU (zero3 and fsdp2)")
    timeout_s: PositiveInt | None = Field(None, description="wall-clock limit of one attempt")
    python: str | None = Field(None, description="the Python a launched node runs under, its own environment "
                                                 "apart from the grid's (e.g. .venv-node/bin/python, with vLLM); "
                                                 "omitted: the grid's own")

    def problem(self) -> str | None:
        """Checked once a kind's entry is merged over `default` (an entry alone may list one field)."""
        if (self.processes > 1 or self.machines > 1) and self.launch != "accelerate":
            return "several processes or machines need launch: accelerate"
        if self.python and self.launch == "inline":
            return "python (a node runtime) needs launch: process or accelerate"
        if self.offload and self.strategy == "ddp":
            return "offload needs strategy zero3 or fsdp2"
        return None

    @property
    def world_size(self) -> int:
        return self.processes * self.machines


_ACCELERATE_ONLY = ("processes", "machines", "strategy", "offload")


class ResourcesSpec(Strict):
    """Per node kind; what a kind lists overrides `default` field by field (a kind that is not launched with
    accelerate drops processes, machines, strategy and offload). `student_grpo` is for grpo and replay nodes
    on the student (direct GRPO, Stage 3, replay), where it differs from the teacher's `grpo`."""

    default: ResourceSpec = ResourceSpec()
    base: ResourceSpec | None = None
    grpo: ResourceSpec | None = None
    student_grpo: ResourceSpec | None = None
    replay: ResourceSpec | None = None
    rollouts: ResourceSpec | None = None
    forward_kl: ResourceSpec | None = None
    opd: ResourceSpec | None = None
    evaluate: ResourceSpec | None = None

    def of(self, kind: str, settings: str | None = None) -> ResourceSpec:
        """The resources of a node of `kind` (`settings`: the GRPO section a grpo or replay node uses)."""
        layers = [self.default, getattr(self, kind)]
        if settings == "student_grpo":
            layers.append(self.student_grpo)
        merged: dict = {}
        for layer in layers:
            merged |= layer.model_dump(exclude_unset=True) if layer else {}
        if merged.get("launch", "inline") != "accelerate":  # a kind that runs unlaunched drops the sharding
            merged = {k: v for k, v in merged.items() if k not in _ACCELERATE_ONLY}
        resources = ResourceSpec(**merged)
        if problem := resources.problem():
            raise ValueError(f"resources.{settings or kind}: {problem}")
        return resources

    def of_node(self, node) -> ResourceSpec:
        """The resources of a planned node (a dag.Node or NodeSpec): its kind, and the GRPO section it uses."""
        return self.of(node.kind, node.params.get("settings"))


class Profile(Strict):
    """Everything one experiment needs, except which arms to run (the grid)."""

    name: str
    seed: int = 0
    seed_scope: Literal["stages", "all"] = Field(
        "stages", description="stages: the toy base models are pretrained once, with `seed`, and shared by every "
                              "grid seed; all: each grid seed pretrains its own, so the spread over seeds includes "
                              "stage 0's draw")
    models: ModelsSpec
    data: DataSpec
    grpo: GRPOSpec = Field(description="teacher-side GRPO (Stage 1)")
    student_grpo: GRPOSpec = Field(description="student-side GRPO (direct GRPO, Stage 3, replay): the fields it "
                                               "lists override grpo's; omitted, it equals grpo")
    rollouts: RolloutsSpec
    forward_kl: ForwardKLSpec
    opd: OPDSpec
    evaluate: EvaluateSpec
    generation: GenerationSpec = GenerationSpec()
    hardware: HardwareSpec = HardwareSpec()
    resources: ResourcesSpec = ResourcesSpec()

    @model_validator(mode="before")
    @classmethod
    def _student_grpo_over_grpo(cls, data):
        # Resolved after `extends`, so a child that changes grpo changes what student_grpo inherits from it.
        if isinstance(data, dict) and isinstance(data.get("grpo"), dict):
            own = data.get("student_grpo") or {}
            if isinstance(own, dict):
                data = {**data, "student_grpo": {**_without_replaced_length(data["grpo"], own), **own}}
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if (self.models.teacher.source == "toy") != (self.data.source == "toy"):
            raise ValueError("toy models go with toy data, hub models with hub data")
        g = self.generation
        if g.sleep_mode and self.hardware.device == "cpu" and g.configured(colocated=True) == "vllm":
            raise ValueError("generation.sleep_mode needs a GPU: vLLM's CPU build has no sleep mode")
        if self.seed_scope == "all" and self.data.source != "toy":
            raise ValueError("seed_scope: 'all' re-draws the toy base models per seed; hub base models are fetched "
                             "as they are (use 'stages')")
        for kind in NODE_KINDS:
            self.resources.of(kind)  # each kind's merged entry must be launchable
        for kind in ("rollouts", "evaluate"):
            if self.resources.of(kind).world_size > 1:
                raise ValueError(f"resources.{kind}: generation runs in one process (use gpus and "
                                 "generation.tensor_parallel_size to spread it)")
        self._check_world_sizes()
        self._check_epochs()
        return self

    def _check_epochs(self) -> None:
        """A length in epochs needs at least one whole sampled batch in each split the section trains on."""
        d = self.data
        splits = [("grpo", "labeled", d.labeled_budget), ("student_grpo", "labeled", d.labeled_budget),
                  ("student_grpo", "held-out", d.heldout_budget), ("opd", "distill", d.distill_prompts)]
        for section, split, size in splits:
            spec = getattr(self, section)
            if spec.epochs is not None and not spec.batches_in(size):
                raise ValueError(f"{section}.epochs: the {split} split ({size} problems) holds no whole batch of "
                                 f"{spec.sampled_batch()[0]} prompts; set steps, or fewer prompts per batch")

    def _check_world_sizes(self) -> None:
        """Each training node's batch must split evenly over its processes."""
        nodes = [("grpo", None, self.grpo), ("grpo", "student_grpo", self.student_grpo),
                 ("replay", "student_grpo", self.student_grpo), ("forward_kl", None, self.forward_kl),
                 ("opd", None, self.opd)]
        for kind, settings, spec in nodes:
            world = self.resources.of(kind, settings).world_size
            where = f"resources.{settings or kind}"
            what, units = spec.batch_units()
            if units % world:
                raise ValueError(f"{where}: {world} processes must divide {what} ({units})")
            colocated = self.generation.colocate_tensor_parallel_size
            if kind != "forward_kl" and world % colocated:
                raise ValueError(f"generation.colocate_tensor_parallel_size ({colocated}) must divide the "
                                 f"{world} processes of {where}: TRL runs colocated vLLM in each rank")
        world = self.resources.of("base").world_size
        for role in ("teacher", "student"):
            pretrain = getattr(self.models, role).pretrain
            if pretrain and pretrain.batch_size % world:
                raise ValueError(f"resources.base: {world} processes must divide "
                                 f"models.{role}.pretrain.batch_size ({pretrain.batch_size})")


# --- grids ----------------------------------------------------------------------------

BASE_MODELS = ("teacher", "student")
NODE_INPUTS = {  # the input roles each trainable node kind takes
    "grpo": ("model",),
    "replay": ("model",),
    "rollouts": ("model",),
    "forward_kl": ("student", "rollouts"),
    "opd": ("teacher", "student"),
}


class GridNode(Strict):
    """One stage in a grid; inputs name other grid nodes or the base 'teacher' / 'student'."""

    kind: Literal["grpo", "replay", "rollouts", "forward_kl", "opd"]
    model: str | None = None
    teacher: str | None = None
    student: str | None = None
    rollouts: str | None = None
    split: Literal["labeled", "heldout"] | None = Field(None, description="grpo only: which labels it spends")
    settings: Literal["grpo", "student_grpo"] | None = Field(None, description="grpo only: profile section to use")

    def inputs(self) -> dict[str, str]:
        return {role: getattr(self, role) for role in NODE_INPUTS[self.kind]}

    @model_validator(mode="after")
    def _roles(self):
        roles = NODE_INPUTS[self.kind]
        missing = [r for r in roles if getattr(self, r) is None]
        extra = [r for r in ("model", "teacher", "student", "rollouts") if r not in roles and getattr(self, r)]
        if missing or extra:
            raise ValueError(f"a {self.kind} node takes inputs {list(roles)}; missing {missing}, unexpected {extra}")
        if (self.kind == "grpo") != (self.split is not None):
            raise ValueError("'split' is required for grpo nodes and only for them")
        return self


class Grid(Strict):
    """Arms to compare: each arm names the model node it evaluates."""

    name: str
    nodes: dict[str, GridNode] = Field(default_factory=dict)
    arms: dict[str, str] = Field(min_length=1)
    budgets: list[PositiveInt] = Field(default_factory=list, description="labeled budgets L to sweep "
                                                                         "(default: the profile's)")

    @model_validator(mode="after")
    def _references(self):
        known = set(self.nodes) | set(BASE_MODELS)
        for name in self.nodes:
            if name in BASE_MODELS:
                raise ValueError(f"node name '{name}' is reserved for the base model")
        for name, node in self.nodes.items():
            for role, ref in node.inputs().items():
                if ref not in known:
                    raise ValueError(f"nodes.{name}.{role}: unknown node '{ref}', expected one of {sorted(known)}")
                if role == "rollouts" and (ref not in self.nodes or self.nodes[ref].kind != "rollouts"):
                    raise ValueError(f"nodes.{name}.rollouts: '{ref}' is not a rollouts node")
        for arm, ref in self.arms.items():
            if ref not in known:
                raise ValueError(f"arms.{arm}: unknown node '{ref}', expected one of {sorted(known)}")
            if ref in self.nodes and self.nodes[ref].kind == "rollouts":
                raise ValueError(f"arms.{arm}: '{ref}' is a rollouts node, not a model")
        self._check_acyclic()
        return self

    def _check_acyclic(self) -> None:
        state: dict[str, str] = {}

        def visit(name: str, path: list[str]) -> None:
            if name in BASE_MODELS or state.get(name) == "done":
                return
            if state.get(name) == "open":
                raise ValueError(f"nodes form a cycle: {' -> '.join(path + [name])}")
            state[name] = "open"
            for ref in self.nodes[name].inputs().values():
                visit(ref, path + [name])
            state[name] = "done"

        for name in self.nodes:
            visit(name, [])


def load_grid(name_or_path: str | Path) -> Grid:
    """A grid by name (configs/grids/<name>.yaml) or path."""
    path = _resolve(name_or_path, "grids")
    return _validate(Grid, load_yaml(path), path)


# --- loading --------------------------------------------------------------------------


def _resolve(name_or_path: str | Path, folder: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"{path}: no such file")
        return path
    candidate = CONFIG_DIR / folder / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = config_names(folder)
        raise ConfigError(f"unknown {folder[:-1]} '{name_or_path}': expected one of {known} or a YAML path")
    return candidate


def _validate(schema: type[BaseModel], data: object, source: Path):
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: invalid {schema.__name__.lower()}"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def config_names(folder: str) -> list[str]:
    """Names of the shipped profiles or grids."""
    return sorted(p.stem for p in (CONFIG_DIR / folder).glob("*.yaml"))


def load_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def on_gpu(profile: Profile) -> bool:
    """`auto` plans for the GPUs the profile's resources name; `cpu` profiles use none."""
    return profile.hardware.device != "cpu"


def generation_backend(profile: Profile, colocated: bool = False) -> str:
    """What `auto` resolves to where the profile runs: vLLM on GPUs (the plan cannot see the machine).
    `colocated`: the backend GRPO and OPD sample with inside their trainer."""
    backend = profile.generation.configured(colocated)
    return ("vllm" if on_gpu(profile) else "transformers") if backend == "auto" else backend


def load_profile(name_or_path: str | Path, overrides: dict | None = None) -> Profile:
    """A profile by name (configs/profiles/<name>.yaml) or path, with optional dotted overrides.

    `extends: <profile>` starts from another profile and changes only what it lists.
    """
    path = _resolve(name_or_path, "profiles")
    data = _with_parents(path, seen=())
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return _absolute_paths(_validate(Profile, data, path))


def _absolute_paths(profile: Profile) -> Profile:
    """Relative local paths are relative to the working directory: fixed now, for nodes that run elsewhere."""
    def absolute(value: str | None) -> str | None:
        return str(Path(value).expanduser().resolve()) if value else value

    models = {}
    for role in BASE_MODELS:
        spec = getattr(profile.models, role)
        models[role] = spec.model_copy(update={"name": absolute(spec.name) if spec.name and is_local(spec.name)
                                               else spec.name})
    benchmarks = [b.model_copy(update={"path": absolute(b.path)}) for b in profile.data.benchmarks]
    data = profile.data.model_copy(update={"train_path": absolute(profile.data.train_path), "benchmarks": benchmarks})
    # A venv's python is a link to the interpreter it was made from: made absolute, not resolved.
    runtimes = {kind: spec.model_copy(update={"python": str(Path(spec.python).expanduser().absolute())})
                for kind, spec in profile.resources if spec is not None and spec.python and "/" in spec.python}
    return profile.model_copy(update={"models": profile.models.model_copy(update=models), "data": data,
                                      "resources": profile.resources.model_copy(update=runtimes)})


def _with_parents(path: Path, seen: tuple) -> dict:
    data = load_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = _resolve(parent, "profiles")
    if parent_path in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle through {parent_path}")
    return _merge(_with_parents(parent_path, seen + (path,)), data)


LENGTHS = ("steps", "epochs")  # two ways to say one thing: the one a child (or student_grpo) sets replaces the other


def _merge(base: dict, top: dict) -> dict:
    merged = _without_replaced_length(base, top)
    for key, value in top.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def _without_replaced_length(base: dict, top: dict) -> dict:
    if not set(LENGTHS) & top.keys():
        return dict(base)
    return {k: v for k, v in base.items() if k not in LENGTHS}


def _set_dotted(data: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
    data[leaf] = value
