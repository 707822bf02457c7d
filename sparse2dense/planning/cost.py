"""The compute plan: GPU-hours and peak memory per device of every node, before anyone pays for them.

A first-order model, stated so that it can be checked by hand (README, "Compute plan"):

- FLOPs: a training pass costs 6 x P x tokens (forward 2, backward 4), 8 x with gradient
  checkpointing (the forward runs twice); a forward-only pass (old log-probs, a teacher scoring)
  and sampling cost 2 x P x tokens. P counts the parameters that take part in matrix products:
  all but an untied input embedding, which is a table lookup. Attention's own (quadratic) FLOPs
  are left out, as the 6PT rule does.
- GPU-hours: a node reserving G GPUs of which A compute takes wall = FLOPs / (A x peak x
  utilisation), so G x wall / 3600 = (G / A) x FLOPs / (peak x utilisation) / 3600, with one
  utilisation for training and scoring passes and a lower one for sampling. Sampling takes the
  longer of that and its memory bound: each decode step reads the weights and the KV cache of
  the sequences in flight (as many as the engine's KV cache holds) and yields one token each.
- Training passes run on padded micro-batches: completion lengths are taken as uniform on
  [0, 2 x mean] (capped at the limit), so a micro-batch of m is padded to 2 x mean x m / (m + 1).
- Memory per device: persistent state (trained models 16 bytes/param, frozen ones 2 or 4,
  sharded over the world size under zero3/fsdp2, nothing when offloaded to CPU), plus the
  gathered working set of a sharded model, activations at the longest sequence, and
  generation's memory (vLLM's pre-allocated share, or a transformers KV cache).

Token counts come from the profile (assumed prompt lengths, completions at an assumed fraction of
their length limit) or, for nodes already run, from what their manifests measured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TRAINING_KINDS, ModelSpec, Profile, generation_backend, is_local, on_gpu
from .dag import Node, Plan, family, read_manifest

GIB = 2**30
COMPLETION_FILL = 0.3  # completions average 30% of their length limit: Qwen3 non-thinking math answers
#                        run ~1-3k tokens against the 8k (training) and 16k (evaluation) caps
PROMPT_TOKENS = {  # mean prompt tokens with chat template and suffix (estimates, not measured)
    "dapo-math": 130, "math500": 100, "aime24": 140, "aime25": 140, "toy": 12,
}
VLLM_MAX_SEQS = 256  # vLLM's default max_num_seqs: the most sequences one engine decodes at once
BENCHMARK_PROBLEMS = {"math500": 500, "aime24": 30, "aime25": 30, "toy": 600}  # a toy benchmark's default size
TOY_SOLUTION_TOKENS = 32  # a toy worked solution: a few "47+3=50" steps and \boxed{N}
TOY_VOCAB = 103  # len(models.build_toy_tokenizer()): 6 specials + 97 printable characters (checked in tests)
OVERHEAD_GIB = 1.0  # CUDA context and allocator slack of a process that is not vLLM (vLLM's share includes its own)


# --- model sizes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Arch:
    """A dense decoder's shape: enough for its parameter count, KV cache and activations."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    qk_norm: bool  # Qwen3 normalises queries and keys per head; Llama does not

    @property
    def layer_params(self) -> int:
        """Attention (q, k, v, o; no biases), SwiGLU MLP (gate, up, down), two RMSNorms (+ q/k norms)."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        norms = 2 * h + (2 * self.head_dim if self.qk_norm else 0)
        return h * (q + 2 * kv) + q * h + 3 * h * self.intermediate_size + norms

    @property
    def root_params(self) -> int:
        """What sits outside the decoder layers: embeddings, lm_head unless tied, the final norm."""
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2) + self.hidden_size

    @property
    def params(self) -> int:
        return self.num_layers * self.layer_params + self.root_params

    @property
    def matmul_params(self) -> int:
        """P of the FLOP rules: an untied input embedding is a lookup, not a matrix product."""
        return self.params - (0 if self.tied_embeddings else self.vocab_size * self.hidden_size)

    @property
    def layer_activations(self) -> int:
        """Values one decoder layer keeps per token for its backward: both norms' inputs and outputs, q,
        k, v, the attention output, and the MLP's gate, up, activation and product."""
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return 4 * self.hidden_size + 2 * q + 2 * kv + 4 * self.intermediate_size

    def kv_bytes_per_token(self, bytes_per_value: int) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * bytes_per_value


# The paper's five models, from each model's config.json on the Hugging Face hub (hidden_size,
# num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim, intermediate_size, vocab_size,
# tie_word_embeddings). Totals: 1.72B, 8.19B, 14.77B, 8.03B, 70.55B parameters.
KNOWN_ARCHS = {
    "Qwen/Qwen3-1.7B": Arch(2048, 28, 16, 8, 128, 6144, 151936, tied_embeddings=True, qk_norm=True),
    "Qwen/Qwen3-8B": Arch(4096, 36, 32, 8, 128, 12288, 151936, tied_embeddings=False, qk_norm=True),
    "Qwen/Qwen3-14B": Arch(5120, 40, 40, 8, 128, 17408, 151936, tied_embeddings=False, qk_norm=True),
    "meta-llama/Llama-3.1-8B-Instruct": Arch(4096, 32, 32, 8, 128, 14336, 128256, tied_embeddings=False,
                                             qk_norm=False),
    "meta-llama/Llama-3.3-70B-Instruct": Arch(8192, 80, 64, 8, 128, 28672, 128256, tied_embeddings=False,
                                              qk_norm=False),
}


def arch_of(spec: ModelSpec) -> tuple[Arch | None, str]:
    """The model's shape and where it came from: the toy arch, a local config.json, or the built-in table.

    config.json is read as JSON rather than through transformers' AutoConfig: importing transformers
    costs seconds, and the plan must stay fast and offline.
    """
    if spec.source == "toy":
        a = spec.arch
        return Arch(a.hidden_size, a.num_layers, a.num_heads, a.num_kv_heads, a.hidden_size // a.num_heads,
                    a.intermediate_size, TOY_VOCAB, tied_embeddings=True, qk_norm=True), "toy arch in the profile"
    path = local_config(spec)
    if path is not None:
        return arch_from_config(json.loads(path.read_text())), f"{path}"
    if spec.name in KNOWN_ARCHS:
        return KNOWN_ARCHS[spec.name], "built-in table, from the hub's config.json"
    return None, "unknown: no local config.json and not in the built-in table"


def local_config(spec: ModelSpec) -> Path | None:
    """config.json of a local folder, or of the hub model in the local hub cache (never the network)."""
    if is_local(spec.name):
        path = Path(spec.name).expanduser() / "config.json"
        return path if path.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec.name, "config.json", revision=spec.revision)
    return Path(found) if isinstance(found, str) else None


def arch_from_config(config: dict) -> Arch:
    """A transformers config.json (a multimodal one's text_config) as an Arch, with transformers' defaults."""
    c = config.get("text_config", config)
    heads = c["num_attention_heads"]
    return Arch(c["hidden_size"], c["num_hidden_layers"], heads, c.get("num_key_value_heads") or heads,
                c.get("head_dim") or c["hidden_size"] // heads, c["intermediate_size"], c["vocab_size"],
                tied_embeddings=bool(c.get("tie_word_embeddings", False)),
                qk_norm=str(c.get("model_type", "")).startswith("qwen3"))


# --- the device ---------------------------------------------------------------------------


def devices(profile: Profile, node: Node) -> tuple[int, int]:
    """(GPUs the node reserves, GPUs that compute). Reserved but idle GPUs are paid for too."""
    if not on_gpu(profile):
        return 0, 0
    res = profile.resources.of_node(node)
    if node.kind in TRAINING_KINDS:
        launched = res.launch == "accelerate"
        active = res.world_size if launched else 1
        return res.machines * max(res.gpus, res.processes if launched else 1), active
    active = profile.generation.tensor_parallel_size if generation_backend(profile) == "vllm" else 1
    return max(res.gpus, active), active


# --- tokens -------------------------------------------------------------------------------


@dataclass
class Tokens:
    """Completion lengths measured by nodes already run: per key, and per (kind, family) for the rest."""

    by_key: dict[str, dict[str, float]] = field(default_factory=dict)  # key -> {benchmark or "": mean}
    by_kind: dict[tuple[str, str], dict[str, list[float]]] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)  # what the plan took from measurements, for the text

    def completion(self, node: Node, bench: str, limit: int) -> float:
        """Mean completion tokens: the node's own measurement, its kind's (same family first), or the assumption."""
        own = self.by_key.get(node.key, {}).get(bench)
        if own is not None:
            self.used.add(f"{node.kind} {node.name}{' ' + bench if bench else ''} (its own run)")
            return own
        for fam in (family(node.input_map["model"]), None):
            values = [v for (kind, f), per in self.by_kind.items() if kind == node.kind and fam in (None, f)
                      for v in per.get(bench, [])]
            if values:
                self.used.add(f"{node.kind}{' ' + bench if bench else ''}: mean of {len(values)} run(s)")
                return sum(values) / len(values)
        return COMPLETION_FILL * limit


def measured_tokens(plan: Plan, root: Path | None) -> Tokens:
    """Mean response tokens that completed rollouts and evaluate nodes recorded in their manifests."""
    tokens = Tokens()
    for node in plan.nodes.values():
        manifest = read_manifest(root, node) if root is not None and node.kind in ("rollouts", "evaluate") else None
        if manifest is None:
            continue
        metrics = manifest.get("metrics", {})
        if node.kind == "rollouts":
            means = {"": metrics.get("mean_response_tokens")}
        else:
            means = {b["name"]: metrics.get(f"{b['name']}/mean_response_tokens") for b in node.params["benchmarks"]}
        means = {b: float(v) for b, v in means.items() if v is not None}
        tokens.by_key[node.key] = means
        per = tokens.by_kind.setdefault((node.kind, family(node.input_map["model"])), {})
        for bench, value in means.items():
            per.setdefault(bench, []).append(value)
    return tokens


def train_prompt_tokens(profile: Profile) -> int:
    return PROMPT_TOKENS["toy" if profile.data.source == "toy" else "dapo-math"]


# --- one node -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeCost:
    gpus: int  # reserved
    sample_flops: float  # at the generation utilisation
    pass_flops: float  # training and forward-only passes, at the training utilisation
    gpu_hours: float | None  # None: a model of unknown size
    peak_gpu_memory_gib: float | None
    fits: bool | None
    memory: dict[str, float] = field(default_factory=dict)  # the parts of the peak, GiB
    problem: str = ""  # why it does not fit
    sampling_gpu_hours: float = 0.0  # the part of gpu_hours spent sampling
    in_flight: int | None = None  # sequences one engine decodes at once (the fewest, over a node's runs)

    @property
    def flops(self) -> float:
        return self.sample_flops + self.pass_flops

    def fields(self) -> dict:
        """What `s2d plan --format json` adds to a node."""
        return {"gpus": self.gpus, "gpu_hours": self.gpu_hours, "sampling_gpu_hours": self.sampling_gpu_hours,
                "in_flight": self.in_flight, "peak_gpu_memory_gib": self.peak_gpu_memory_gib, "fits": self.fits}

    def columns(self) -> str:
        """What the text plan adds to a node's line."""
        hours, peak = (f"{v:9.1f}" if v is not None else f"{'?':>9}" for v in (self.gpu_hours,
                                                                                self.peak_gpu_memory_gib))
        flag = {True: "", False: " DOES NOT FIT", None: " size unknown"}[self.fits]
        return f"{hours} GPU-h {peak} GiB/GPU{flag}"


@dataclass
class Memory:
    """A node's peak per device: parts that add up, and what must fit inside vLLM's share: its weights and
    the KV cache of one sequence at the engine's context (vLLM refuses to start otherwise)."""

    parts: dict[str, float]  # bytes
    vllm_weights: float = 0.0  # bytes per GPU
    vllm_share: float = 0.0
    vllm_sequence_kv: float = 0.0  # bytes per GPU for one sequence at the bounded context
    vllm_context: int = 0  # tokens: the longest prompt plus the completion limit

    def vllm_problem(self) -> str:
        if self.vllm_weights + self.vllm_sequence_kv <= self.vllm_share:
            return ""
        return (f"vLLM's share ({self.vllm_share / GIB:.1f} GiB) cannot hold its weights "
                f"({self.vllm_weights / GIB:.1f} GiB per GPU) and one sequence of {self.vllm_context} tokens "
                f"({self.vllm_sequence_kv / GIB:.1f} GiB of KV cache)")

    def vllm_sequences(self) -> int:
        """Sequences at the full context whose KV cache the share holds at once (how wide decoding runs)."""
        free = self.vllm_share - self.vllm_weights
        return int(free // self.vllm_sequence_kv) if self.vllm_sequence_kv and free > 0 else 0


@dataclass
class _Ctx:
    profile: Profile
    archs: dict[str, Arch | None]
    tokens: Tokens

    def arch(self, node: Node) -> Arch | None:
        """The architecture of a model node: its base model's (training never changes the shape)."""
        return self.archs[family(node)]

    @property
    def compute_bytes(self) -> int:
        """Bytes per value of bf16 compute (and of frozen weights), or of fp32."""
        return 2 if self.profile.hardware.precision == "bf16" else 4


def node_cost(ctx: _Ctx, node: Node) -> NodeCost:
    """FLOPs, GPU-hours and peak memory per device of one node."""
    work = _WORK[node.kind](ctx, node)
    if work is None:
        return NodeCost(0, 0.0, 0.0, None, None, None, problem="model size unknown")
    sample, passes, memory, decode = work
    gpus, active = devices(ctx.profile, node)
    if gpus == 0 or sample + passes == 0:
        return NodeCost(0, sample, passes, 0.0, 0.0, True)
    hw = ctx.profile.hardware
    peak = hw.gpu_peak_tflops * 1e12
    sampling = sample / (peak * hw.generation_utilization)
    if decode is not None:
        sampling = max(sampling, decode.gpu_seconds(hw, ctx.compute_bytes))
    share = gpus / active / 3600
    seconds = sampling + passes / (peak * hw.train_utilization)
    parts = {k: v / GIB for k, v in memory.parts.items() if v}
    total = sum(parts.values())
    problem = ""
    if total > hw.gpu_memory_gib:
        problem = f"needs {total:.1f} GiB per device (" + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()) + ")"
    else:
        problem = memory.vllm_problem()
    return NodeCost(gpus, sample, passes, round(share * seconds, 3), round(total, 2), not problem, parts, problem,
                    round(share * sampling, 3), decode.in_flight if decode is not None else None)


@dataclass(frozen=True)
class Decode:
    """Sampling's memory bound: one decode step reads the engine's weights and the KV cache of the sequences in
    flight, and yields a token for each."""

    arch: Arch
    tokens: float  # completion tokens generated, all engines together
    context: float  # tokens a sequence in flight holds on average: its prompt and a mean completion
    in_flight: int  # sequences one engine decodes at once
    tensor_parallel: int

    def gpu_seconds(self, hw, compute_bytes: int) -> float:
        kv = self.in_flight * self.context * self.arch.kv_bytes_per_token(compute_bytes)
        bandwidth = hw.gpu_memory_bandwidth_gbs * 1e9 * hw.decode_bandwidth_utilization
        step_s = (compute_bytes * self.arch.params + kv) / self.tensor_parallel / bandwidth  # each GPU its shard
        return self.tokens / self.in_flight * step_s * self.tensor_parallel


def _decode(ctx: _Ctx, arch: Arch, tokens: float, context: float, per_engine: int, memory: Memory,
            colocated: bool) -> Decode:
    """Sequences in flight per engine: what it is given, within vLLM's cap and what its KV cache holds."""
    g = ctx.profile.generation
    tp = g.colocate_tensor_parallel_size if colocated else g.tensor_parallel_size
    if generation_backend(ctx.profile, colocated) != "vllm":
        return Decode(arch, tokens, context, max(1, min(per_engine, g.batch_size)), 1)
    kv = context * arch.kv_bytes_per_token(ctx.compute_bytes) / tp
    holds = int(max(memory.vllm_share - memory.vllm_weights, 0) // kv)
    return Decode(arch, tokens, context, max(1, min(per_engine, VLLM_MAX_SEQS, holds)), tp)


def padded(mean: float, limit: int, micro_batch: int) -> float:
    """A micro-batch's completion length after padding to its longest: the expected longest of `micro_batch`
    lengths uniform on [0, 2 x mean], capped at `limit`."""
    return min(float(limit), 2 * mean * micro_batch / (micro_batch + 1)) if micro_batch > 1 else mean


def _engines(ctx: _Ctx, res) -> int:
    """Colocated engines of a training node: one per tensor-parallel group of its ranks."""
    return max(1, res.world_size // ctx.profile.generation.colocate_tensor_parallel_size)


def _models(ctx: _Ctx, *nodes: Node) -> list[Arch] | None:
    archs = [ctx.arch(n) for n in nodes]
    return None if any(a is None for a in archs) else archs


def _grpo(ctx: _Ctx, node: Node):
    """Sample every completion, score it again when one batch serves several steps, train on it."""
    models = _models(ctx, node.input_map["model"])
    if models is None:
        return None
    (arch,), spec = models, node.params["spec"]
    completions = spec["steps"] * spec["prompts_per_step"] * spec["num_generations"]
    prompt, limit = train_prompt_tokens(ctx.profile), spec["max_completion_length"]
    mean = COMPLETION_FILL * limit
    p = arch.matmul_params
    scoring = (spec["steps_per_generation"] > 1) + (spec["beta"] > 0)  # old log-probs; the reference model
    passes = (_train_factor(ctx) + 2 * scoring) * p * completions * (prompt + padded(mean, limit, spec["micro_batch"]))
    res = ctx.profile.resources.of_node(node)
    longest = prompt + limit
    batch = spec["prompts_per_step"] * spec["num_generations"] * spec["steps_per_generation"]  # one generation
    memory = _training_memory(ctx, res, arch, [arch] if spec["beta"] > 0 else [], spec["micro_batch"] * longest,
                              sampler=(arch, batch // res.world_size, longest))
    decode = _decode(ctx, arch, completions * mean, prompt + mean, batch // _engines(ctx, res), memory, True)
    return 2 * p * completions * (prompt + mean), passes, memory, decode


def _opd(ctx: _Ctx, node: Node):
    """The student samples one completion per prompt, the teacher scores it, the student trains on it."""
    models = _models(ctx, node.input_map["student"], node.input_map["teacher"])
    if models is None:
        return None
    (student, teacher), spec = models, node.params["spec"]
    samples = spec["steps"] * spec["prompts_per_step"]
    prompt, limit = train_prompt_tokens(ctx.profile), spec["max_completion_length"]
    mean = COMPLETION_FILL * limit
    trained = samples * (prompt + padded(mean, limit, spec["micro_batch"]))
    passes = (_train_factor(ctx) * student.matmul_params + 2 * teacher.matmul_params) * trained
    res = ctx.profile.resources.of("opd")
    longest = prompt + limit
    memory = _training_memory(ctx, res, student, [teacher], spec["micro_batch"] * longest,
                              sampler=(student, spec["prompts_per_step"] // res.world_size, longest))
    decode = _decode(ctx, student, samples * mean, prompt + mean, spec["prompts_per_step"] // _engines(ctx, res),
                     memory, True)
    return 2 * student.matmul_params * samples * (prompt + mean), passes, memory, decode


def _forward_kl(ctx: _Ctx, node: Node):
    """The teacher scores its own rollouts (soft targets), the student trains on them, `epochs` times."""
    rollouts = node.input_map["rollouts"]
    models = _models(ctx, node.input_map["student"], rollouts.input_map["model"])
    if models is None:
        return None
    (student, teacher), spec = models, node.params["spec"]
    sampled = rollouts.params["spec"]
    count = rollouts.params["split"]["size"] * sampled["samples_per_prompt"]
    prompt = train_prompt_tokens(ctx.profile)
    completion = padded(ctx.tokens.completion(rollouts, "", sampled["max_new_tokens"]), sampled["max_new_tokens"],
                        spec["micro_batch"])
    tokens = spec["epochs"] * count * min(prompt + completion, spec["max_length"])
    soft = spec["target"] == "soft"
    passes = (_train_factor(ctx) * student.matmul_params + 2 * teacher.matmul_params * soft) * tokens
    longest = min(prompt + sampled["max_new_tokens"], spec["max_length"])
    memory = _training_memory(ctx, ctx.profile.resources.of("forward_kl"), student, [teacher] if soft else [],
                              spec["micro_batch"] * longest, sampler=None)
    return 0.0, passes, memory, None


def _rollouts(ctx: _Ctx, node: Node):
    """The teacher samples `samples_per_prompt` completions per distillation prompt."""
    models = _models(ctx, node.input_map["model"])
    if models is None:
        return None
    (arch,), spec = models, node.params["spec"]
    prompt = train_prompt_tokens(ctx.profile)
    count = node.params["split"]["size"] * spec["samples_per_prompt"]
    mean = ctx.tokens.completion(node, "", spec["max_new_tokens"])
    memory = _generation_memory(ctx, arch, prompt + spec["max_new_tokens"])
    decode = _decode(ctx, arch, count * mean, prompt + mean, count, memory, False)
    return 2 * arch.matmul_params * count * (prompt + mean), 0.0, memory, decode


def _evaluate(ctx: _Ctx, node: Node):
    """`samples` completions for every problem of every benchmark, one benchmark after another."""
    models = _models(ctx, node.input_map["model"])
    if models is None:
        return None
    (arch,), spec = models, node.params["spec"]
    benches = node.params["benchmarks"]
    longest = max(PROMPT_TOKENS[b["source"]] + spec["max_new_tokens"] for b in benches)
    memory = _generation_memory(ctx, arch, longest)
    flops, decodes = 0.0, []
    for bench in benches:
        prompt, count = PROMPT_TOKENS[bench["source"]], problems(bench) * spec["samples"]
        mean = ctx.tokens.completion(node, bench["name"], spec["max_new_tokens"])
        flops += 2 * arch.matmul_params * count * (prompt + mean)
        decodes.append(_decode(ctx, arch, count * mean, prompt + mean, count, memory, False))
    return flops, 0.0, memory, _Decodes(decodes)


@dataclass(frozen=True)
class _Decodes:
    """Several sampling runs in one node (benchmarks one after another): their memory bounds add up."""

    runs: list[Decode]

    @property
    def in_flight(self) -> int:
        return min(d.in_flight for d in self.runs)

    def gpu_seconds(self, hw, compute_bytes: int) -> float:
        return sum(d.gpu_seconds(hw, compute_bytes) for d in self.runs)


def problems(bench: dict) -> int:
    """A benchmark's problem count: its `size` (the first N; at most all of a hub benchmark), else all."""
    known = BENCHMARK_PROBLEMS[bench["source"]]
    if bench["source"] == "toy":
        return bench["size"] or known
    return min(bench["size"] or known, known)


def _base(ctx: _Ctx, node: Node):
    """Hub models are only fetched; a toy model is pretrained (at most max_steps; it stops at its target)."""
    spec = getattr(ctx.profile.models, node.params["role"])
    if spec.source == "hub":
        return 0.0, 0.0, Memory({}), None
    arch, pretrain = ctx.arch(node), spec.pretrain
    length = PROMPT_TOKENS["toy"] + TOY_SOLUTION_TOKENS
    tokens = pretrain.max_steps * pretrain.batch_size * length
    memory = _training_memory(ctx, ctx.profile.resources.of("base"), arch, [], pretrain.batch_size * length,
                              sampler=None)
    return 0.0, _train_factor(ctx) * arch.matmul_params * tokens, memory, None


_WORK = {"base": _base, "grpo": _grpo, "replay": _grpo, "rollouts": _rollouts, "forward_kl": _forward_kl,
         "opd": _opd, "evaluate": _evaluate}


def _train_factor(ctx: _Ctx) -> int:
    """6 x P x tokens per training pass; gradient checkpointing runs the forward a second time."""
    return 8 if ctx.profile.hardware.gradient_checkpointing else 6


# --- memory ---------------------------------------------------------------------------------


def _training_memory(ctx: _Ctx, res, trained: Arch, frozen: list[Arch], micro_tokens: int,
                     sampler: tuple[Arch, int] | None) -> Memory:
    """A training node's peak per device.

    Persistent: the trained model's fp32 weights, fp32 gradients and Adam's two fp32 moments (16
    bytes/param) and frozen models in compute precision; zero3/fsdp2 shard them over the world size,
    ddp replicates them, offload keeps them on the CPU. Transient: a sharded model gathers its root
    unit (embeddings, lm_head) and two decoder layers at a time in compute precision, with their
    gradients for the trained one; activations of one micro-batch at the longest sequence. Logits
    are never held in full (TRL's fused lm_head, the chunked divergence). `sampler` (the model that
    generates, and the tokens a rank generates at once) adds colocated vLLM's share, or a
    transformers KV cache; generation and training take turns when vLLM sleeps or vLLM is not used.
    """
    hw, g, b = ctx.profile.hardware, ctx.profile.generation, ctx.compute_bytes
    sharded = res.strategy in ("zero3", "fsdp2") and res.world_size > 1
    shards = res.world_size if sharded else 1
    parts = {"trained model": 0 if res.offload else 16 * trained.params / shards,
             "frozen models": 0 if res.offload else sum(b * a.params / shards for a in frozen)}
    unit = lambda a: a.root_params + 2 * a.layer_params  # noqa: E731
    gathered = (2 * b * unit(trained) + sum(b * unit(a) for a in frozen)) if sharded else 0
    train = gathered + _activation_bytes(trained, micro_tokens, hw, b, sharded)
    memory = Memory(parts)
    vllm = generation_backend(ctx.profile, colocated=True) == "vllm"
    if sampler is None:
        gen, label = 0, ""
    elif vllm:
        gen, label = g.colocate_gpu_memory_utilization * hw.gpu_memory_gib * GIB, "vLLM colocated"
        _vllm_fit(memory, sampler[0], sampler[2], gen, g.colocate_tensor_parallel_size, b)
    else:
        arch, sequences, longest = sampler
        gen, label = sequences * longest * arch.kv_bytes_per_token(b), "KV cache"
    if vllm and not g.sleep_mode:
        parts |= {"gathered weights and activations": train, label: gen}
    elif gen > train:  # generation and training take turns: the larger of the two
        parts[label] = gen
    else:
        parts["gathered weights and activations"] = train
    parts["overhead"] = OVERHEAD_GIB * GIB
    return memory


def _vllm_fit(memory: Memory, arch: Arch, context: int, share: float, tensor_parallel: int, compute: int) -> Memory:
    """What vLLM's share must hold on each GPU: its shard of the weights and of one full-context sequence."""
    memory.vllm_share, memory.vllm_context = share, context
    memory.vllm_weights = compute * arch.params / tensor_parallel
    memory.vllm_sequence_kv = context * arch.kv_bytes_per_token(compute) / tensor_parallel
    return memory


def _activation_bytes(arch: Arch, tokens: int, hw, compute: int, sharded: bool) -> float:
    """One micro-batch's saved activations.

    With gradient checkpointing: each layer's input (the residual stream) plus one layer's full set
    while it is recomputed. The residual stream is in compute precision when FSDP2/ZeRO-3 cast the
    weights, and fp32 under ddp (fp32 weights with autocast keep the residual adds in fp32).
    """
    residual = compute if sharded else 4
    layer = tokens * arch.layer_activations * compute
    if hw.gradient_checkpointing:
        return arch.num_layers * tokens * arch.hidden_size * residual + layer
    return arch.num_layers * layer


def _generation_memory(ctx: _Ctx, arch: Arch, longest: int) -> Memory:
    """A standalone sampler: vLLM pre-allocates its share; transformers holds weights and a KV cache for
    `generation.batch_size` sequences at the longest length."""
    hw, g, b = ctx.profile.hardware, ctx.profile.generation, ctx.compute_bytes
    if generation_backend(ctx.profile) == "vllm":
        share = g.gpu_memory_utilization * hw.gpu_memory_gib * GIB
        return _vllm_fit(Memory({"vLLM share": share}), arch, longest, share, g.tensor_parallel_size, b)
    return Memory({"weights": b * arch.params, "KV cache": g.batch_size * longest * arch.kv_bytes_per_token(b),
                   "overhead": OVERHEAD_GIB * GIB})


# --- the plan -------------------------------------------------------------------------------


@dataclass
class Costs:
    profile: Profile
    nodes: dict[str, NodeCost]
    archs: dict[str, tuple[Arch | None, str]]
    tokens: Tokens

    def total_gpu_hours(self, keys=None) -> float:
        return sum(c.gpu_hours or 0.0 for k, c in self.nodes.items() if keys is None or k in keys)


def estimate(plan: Plan, root: Path | None = None) -> Costs:
    """Every node's cost; completed rollouts and evaluate nodes under `root` lend their measured lengths."""
    archs = {role: arch_of(getattr(plan.profile.models, role)) for role in ("teacher", "student")}
    ctx = _Ctx(plan.profile, {role: a for role, (a, _) in archs.items()}, measured_tokens(plan, root))
    return Costs(plan.profile, {key: node_cost(ctx, node) for key, node in plan.nodes.items()}, archs, ctx.tokens)


def describe(costs: Costs, plan: Plan, statuses: dict[str, str]) -> list[str]:
    """The assumptions, the warnings and the total, as lines for `s2d plan`."""
    p = costs.profile
    hw = p.hardware
    lines = ["cost model (README, \"Compute plan\"): training 6 x P x tokens (8 x with gradient checkpointing), "
             "sampling and forward-only passes 2 x P x tokens"]
    if on_gpu(p):
        lines.append(f"device: {hw.gpu_name}, {hw.gpu_peak_tflops:g} TFLOP/s dense bf16 peak, "
                     f"{hw.gpu_memory_gib:g} GiB; utilisation {hw.train_utilization:g} training, "
                     f"{hw.generation_utilization:g} sampling")
    else:
        flops = sum(c.flops for c in costs.nodes.values())
        lines.append(f"device: cpu (hardware.device): no GPU time or memory; {flops:.3g} FLOPs in all")
    for role, (arch, source) in costs.archs.items():
        size = (f"{arch.params / 1e9:.2f}B" if arch.params >= 1e8 else f"{arch.params / 1e6:.2f}M") if arch else None
        size = f"{size} params" if size else "size unknown"
        lines.append(f"{role}: {getattr(p.models, role).name or 'toy'}: {size} ({source})")
    prompts = ", ".join(f"{v} {k}" for k, v in PROMPT_TOKENS.items()
                        if (k == "toy") == (p.data.source == "toy"))
    lines.append(f"tokens: prompts ~{prompts}; completions {COMPLETION_FILL:g} x their length limit unless measured; "
                 f"memory at the longest sequence")
    if on_gpu(p):
        lines.append(f"sampling: the slower of {hw.generation_utilization:g} x peak and decoding at "
                     f"{hw.decode_bandwidth_utilization:g} x {hw.gpu_memory_bandwidth_gbs:g} GB/s (each step reads the "
                     f"weights and the KV cache of the sequences in flight: as many as the KV cache holds, at most "
                     f"{VLLM_MAX_SEQS} per vLLM engine)")
        lines.append("training: micro-batches padded to their longest completion, lengths taken as uniform on "
                     "[0, 2 x mean] (2 x mean x m / (m + 1) for a micro-batch of m)")
    lines.append("measured: " + ("; ".join(sorted(costs.tokens.used)) or "none (no rollouts or evaluate node has run)"))
    for key, c in costs.nodes.items():
        node = plan.nodes[key]
        if c.fits is None:
            lines.append(f"WARNING: {node.kind} {node.name} [{key[:8]}]: {c.problem}, not estimated")
        elif not c.fits:
            lines.append(f"WARNING: {node.kind} {node.name} [{key[:8]}] does not fit a {hw.gpu_memory_gib:g} GiB "
                         f"{hw.gpu_name}: {c.problem}")
    pending = [k for k, s in statuses.items() if s == "pending"]
    lines.append(f"total: {costs.total_gpu_hours():,.1f} GPU-hours for {len(costs.nodes)} nodes "
                 f"({costs.total_gpu_hours(set(pending)):,.1f} GPU-hours in the {len(pending)} pending)")
    return lines
