"""The compute plan: the cost model on the paper's profiles against values computed by hand."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparse2dense.cli import main
from sparse2dense.config import ModelSpec, load_grid, load_profile
from sparse2dense.planning import cost, dag

GIB = 2**30
PEAK = 989e12  # H100-80GB dense bf16, FLOP/s
TRAIN, SAMPLE = 0.35, 0.15  # utilisations
BANDWIDTH = 3350e9 * 0.6  # H100 SXM bytes/s, at the decode utilisation
KV_8B, KV_17B = 2 * 36 * 8 * 128 * 2, 2 * 28 * 8 * 128 * 2  # K and V, layers x kv heads x head dim, bf16: bytes/token
MEAN = 0.3 * 8192  # an assumed completion: 2,457.6 tokens


def decode_s(weights: float, kv_per_token: int, context: float, in_flight: int, generated: float) -> float:
    """GPU-seconds of memory-bound decoding: one step reads the weights and the in-flight KV cache."""
    return generated / in_flight * (weights + in_flight * context * kv_per_token) / BANDWIDTH


def holds(share_gib: float, weights: float, kv_per_token: int, context: float) -> int:
    return int((share_gib * GIB - weights) // (context * kv_per_token))

# Parameters, from the shapes in cost.KNOWN_ARCHS (per layer: q, k, v, o, SwiGLU MLP, two norms, q/k norms):
# Qwen3-1.7B: layer 2048*(2048+2*1024) + 2048*2048 + 3*2048*6144 + 2*2048 + 2*128 = 50,336,000;
#   28 layers + tied embedding 151936*2048 + final norm 2048 = 1,720,574,976
# Qwen3-8B: layer 4096*(4096+2*1024) + 4096*4096 + 3*4096*12288 + 2*4096 + 2*128 = 192,946,432;
#   36 layers + embedding and lm_head 2*151936*4096 + 4096 = 8,190,735,360
P_17B = 1_720_574_976  # tied: the embedding is the lm_head, every parameter takes part in a matmul
P_8B = 8_190_735_360
P_8B_MATMUL = P_8B - 151936 * 4096  # the untied input embedding is a lookup: 7,568,405,504


def qwen_plan(name="qwen3-8b-1.7b", overrides=None):
    return dag.plan(load_profile(name, overrides), load_grid("allocation"))


def node_named(plan, name):
    return next(n for n in plan.nodes.values() if n.name == name)


@pytest.fixture(scope="module")
def qwen():
    plan = qwen_plan()
    return plan, cost.estimate(plan)


def test_parameter_counts_by_hand():
    archs = cost.KNOWN_ARCHS
    assert archs["Qwen/Qwen3-1.7B"].params == P_17B
    assert archs["Qwen/Qwen3-8B"].params == P_8B
    assert archs["Qwen/Qwen3-14B"].params == 14_768_307_200
    assert archs["meta-llama/Llama-3.1-8B-Instruct"].params == 8_030_261_248
    assert archs["meta-llama/Llama-3.3-70B-Instruct"].params == 70_553_706_496
    assert archs["Qwen/Qwen3-8B"].matmul_params == P_8B_MATMUL
    assert archs["Qwen/Qwen3-1.7B"].matmul_params == P_17B


@pytest.mark.parametrize("name", list(cost.KNOWN_ARCHS))
def test_parameter_formula_matches_transformers_on_the_meta_device(name):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen3Config

    a = cost.KNOWN_ARCHS[name]
    config_class = Qwen3Config if a.qk_norm else LlamaConfig
    config = config_class(hidden_size=a.hidden_size, num_hidden_layers=a.num_layers,
                          num_attention_heads=a.num_heads, num_key_value_heads=a.num_kv_heads, head_dim=a.head_dim,
                          intermediate_size=a.intermediate_size, vocab_size=a.vocab_size,
                          tie_word_embeddings=a.tied_embeddings)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == a.params


def test_toy_arch_matches_the_built_toy_model():
    from sparse2dense.models import build_toy_model, build_toy_tokenizer

    spec = load_profile("toy").models.teacher
    tokenizer = build_toy_tokenizer()
    assert len(tokenizer) == cost.TOY_VOCAB
    arch, source = cost.arch_of(spec)
    assert source == "toy arch in the profile"
    assert sum(p.numel() for p in build_toy_model(spec.arch, tokenizer, 0).parameters()) == arch.params


def test_a_local_config_json_takes_precedence(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=512, vocab_size=1000).save_pretrained(tmp_path)
    arch, source = cost.arch_of(ModelSpec(source="hub", name=str(tmp_path)))
    assert source == str(tmp_path / "config.json")
    assert arch == cost.Arch(256, 2, 4, 2, 64, 512, 1000, tied_embeddings=False, qk_norm=False)


def test_grpo_teacher_by_hand(qwen):
    plan, costs = qwen
    c = costs.nodes[node_named(plan, "teacher-grpo").key]
    # 1620 steps x 128 prompts x 8 samples = 1,658,880 completions of 130 prompt + 0.3 x 8192 completion tokens
    completions = 1620 * 128 * 8
    compute = 2 * P_8B_MATMUL * completions * (130 + MEAN) / (PEAK * SAMPLE)  # colocated vLLM, compute bound
    # Memory bound: 0.3 x 80 GiB less 15.3 GiB of weights holds 24 sequences of 2,587.6 tokens (of 512 per engine)
    in_flight = holds(0.3 * 80, 2 * P_8B, KV_8B, 130 + MEAN)
    assert in_flight == 24
    sampling = decode_s(2 * P_8B, KV_8B, 130 + MEAN, in_flight, completions * MEAN)
    assert sampling > 4 * compute  # decoding 24 sequences at a time is bandwidth-bound
    padded = 2 * MEAN * 8 / 9  # the longest of a micro-batch of 8: 4,369 tokens
    passes = (8 + 2) * P_8B_MATMUL * completions * (130 + padded)  # checkpointed training + old log-probs
    hours = 8 / 8 * (sampling + passes / (PEAK * TRAIN)) / 3600
    assert c.gpus == 8
    assert c.gpu_hours == pytest.approx(hours, abs=1e-3) and c.gpu_hours == pytest.approx(1052.8, abs=0.1)
    # fsdp2 + offload: no persistent state on the GPU. Transient, in bf16:
    root_and_two_layers = 2 * 151936 * 4096 + 4096 + 2 * 192_946_432  # gathered: 1,630,556,672 params
    gathered = 2 * 2 * root_and_two_layers  # weights and gradients
    micro_tokens = 8 * (130 + 8192)  # 8 completions at the length limit
    checkpoints = 36 * micro_tokens * 4096 * 2  # every layer's input
    one_layer = micro_tokens * (4 * 4096 + 2 * 4096 + 2 * 1024 + 4 * 12288) * 2  # recomputed layer's activations
    train = gathered + checkpoints + one_layer  # 33.76 GiB, above colocated vLLM's 0.3 x 80 = 24 GiB (it sleeps)
    assert c.peak_gpu_memory_gib == pytest.approx(train / GIB + 1, abs=0.01)  # + 1 GiB CUDA overhead
    assert c.peak_gpu_memory_gib == pytest.approx(34.76, abs=0.01) and c.fits


def test_opd_bridge_by_hand(qwen):
    plan, costs = qwen
    c = costs.nodes[node_named(plan, "bridge").key]
    samples = 810 * 256  # 207,360 student samples
    compute = 2 * P_17B * samples * (130 + MEAN) / (PEAK * SAMPLE)
    in_flight = min(256 // 8, holds(0.3 * 80, 2 * P_17B, KV_17B, 130 + MEAN))  # 32 prompts per rank's engine
    assert in_flight == 32
    sampling = max(compute, decode_s(2 * P_17B, KV_17B, 130 + MEAN, in_flight, samples * MEAN))
    trained = samples * (130 + 2 * MEAN * 4 / 5)  # micro-batches of 4, padded to their longest
    passes = (8 * P_17B + 2 * P_8B_MATMUL) * trained  # the student trains, the teacher scores
    hours = (sampling + passes / (PEAK * TRAIN)) / 3600
    assert c.gpu_hours == pytest.approx(hours, abs=1e-3) and c.gpu_hours == pytest.approx(48.0, abs=0.1)
    # training transient (10.5 GiB) is below colocated vLLM's 24 GiB: the peak is vLLM's share + 1 GiB
    assert c.peak_gpu_memory_gib == pytest.approx(0.3 * 80 + 1) and c.fits


def test_forward_kl_by_hand(qwen):
    plan, costs = qwen
    c = costs.nodes[node_named(plan, "fkl-only").key]
    tokens = 1 * 13918 * min(130 + 2 * MEAN * 2 / 3, 10240)  # one epoch, micro-batches of 2 padded to the longer
    passes = (8 * P_17B + 2 * P_8B_MATMUL) * tokens  # student training, teacher scoring (soft targets)
    assert c.gpu_hours == pytest.approx(passes / (PEAK * TRAIN) / 3600, abs=1e-3)
    assert c.gpu_hours == pytest.approx(1.10, abs=0.01)
    gathered = 2 * 2 * (151936 * 2048 + 2048 + 2 * 50_336_000) + 2 * (2 * 151936 * 4096 + 4096 + 2 * 192_946_432)
    micro_tokens = 2 * (130 + 8192)
    activations = 28 * micro_tokens * 2048 * 2 + micro_tokens * (4 * 2048 + 2 * 2048 + 2 * 1024 + 4 * 6144) * 2
    assert c.peak_gpu_memory_gib == pytest.approx((gathered + activations) / GIB + 1, abs=0.01)  # 8.56 GiB


def test_evaluate_by_hand(qwen):
    plan, costs = qwen
    c = costs.nodes[node_named(plan, "evaluate:teacher-base").key]
    # 16 samples of 500 MATH-500 and 2 x 30 AIME problems, completions 0.3 x 16384, one benchmark after another
    mean = 0.3 * 16384
    runs = [(500 * 16, 100), (30 * 16, 140), (30 * 16, 140)]
    compute = sum(2 * P_8B_MATMUL * n * (prompt + mean) for n, prompt in runs) / (PEAK * SAMPLE)
    memory = sum(decode_s(2 * P_8B, KV_8B, prompt + mean, min(n, 256, holds(0.85 * 80, 2 * P_8B, KV_8B, prompt + mean)),
                          n * mean) for n, prompt in runs)  # 76 sequences in flight fit 0.85 x 80 GiB
    assert c.gpu_hours == pytest.approx(max(compute, memory) / 3600, abs=1e-3)
    assert c.gpu_hours == pytest.approx(5.82, abs=0.01)
    assert c.gpus == 1 and c.peak_gpu_memory_gib == pytest.approx(0.85 * 80)  # vLLM pre-allocates its share


def test_hub_base_models_cost_nothing(qwen):
    plan, costs = qwen
    assert costs.nodes[node_named(plan, "teacher").key].gpu_hours == 0


def test_plan_json_carries_cost_fields(capsys):
    assert main(["plan", "--profile", "qwen3-8b-1.7b", "--format", "json", "--artifacts", "/nonexistent"]) == 0
    nodes = json.loads(capsys.readouterr().out)
    assert isinstance(nodes, list) and len(nodes) == 23
    for n in nodes:
        assert {"key", "kind", "name", "arms", "status", "inputs", "gpu_hours", "peak_gpu_memory_gib", "fits"} <= set(n)
        assert n["gpu_hours"] >= 0 and n["peak_gpu_memory_gib"] <= 80 and n["fits"]


def test_plan_text_prints_assumptions_and_total(capsys):
    assert main(["plan", "--profile", "qwen3-8b-1.7b", "--artifacts", "/nonexistent"]) == 0
    out = capsys.readouterr().out
    assert "H100-80GB, 989 TFLOP/s" in out and "utilisation 0.35 training, 0.15 sampling" in out
    assert "0.3 x their length limit" in out and "measured: none" in out
    total = [line for line in out.splitlines() if line.startswith("total:")]
    assert len(total) == 1 and "GPU-hours" in total[0] and "1,672.5" in total[0]


def test_a_node_that_cannot_fit_is_flagged(capsys, tmp_path):
    # Without offload the 70B teacher's GRPO keeps 16 bytes/param / 16 ranks = 65.7 GiB of state on every GPU.
    plan = qwen_plan("llama-70b-8b", {"resources.grpo.offload": False})
    c = cost.estimate(plan).nodes[node_named(plan, "teacher-grpo").key]
    assert c.fits is False and c.peak_gpu_memory_gib > 80
    assert c.memory["trained model"] == pytest.approx(16 * 70_553_706_496 / 16 / GIB)
    profile = tmp_path / "llama-no-offload.yaml"  # a profile path, as a user would pass it
    profile.write_text("extends: llama-70b-8b\nname: llama-no-offload\nresources: {grpo: {offload: false}}\n")
    assert main(["plan", "--profile", str(profile), "--artifacts", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "DOES NOT FIT" in out and "WARNING: grpo teacher-grpo" in out and "does not fit a 80 GiB H100-80GB" in out


def test_vllm_share_must_hold_the_weights():
    # Qwen3-14B in bf16 is 27.5 GiB: colocated vLLM at 0.3 x 80 GiB on one GPU cannot load it (the profile
    # therefore splits it over 2 GPUs).
    plan = qwen_plan("qwen3-14b-1.7b", {"generation.colocate_tensor_parallel_size": 1})
    c = cost.estimate(plan).nodes[node_named(plan, "teacher-grpo").key]
    assert c.fits is False and "vLLM's share (24.0 GiB) cannot hold its weights (27.5 GiB" in c.problem
    shipped = qwen_plan("qwen3-14b-1.7b")
    assert cost.estimate(shipped).nodes[node_named(shipped, "teacher-grpo").key].fits


def test_vllm_share_must_hold_one_sequence_at_the_bounded_context():
    """Qwen3-8B's bf16 weights (15.3 GiB) fit a 0.3 share of a 52 GiB GPU (15.6 GiB), but not with the KV cache
    of one sequence of 130 + 8,192 tokens (1.1 GiB): vLLM would refuse to start."""
    plan = qwen_plan(overrides={"hardware.gpu_memory_gib": 52})
    c = cost.estimate(plan).nodes[node_named(plan, "teacher-grpo").key]
    assert c.fits is False and "and one sequence of 8322 tokens (1.1 GiB of KV cache)" in c.problem
    roomy = qwen_plan(overrides={"hardware.gpu_memory_gib": 56})
    assert cost.estimate(roomy).nodes[node_named(roomy, "teacher-grpo").key].fits


def test_the_forward_kl_teacher_is_counted_as_it_is_placed():
    """Llama-70B's frozen teacher is sharded over the 8 ranks like the student (bf16, 1/8 each) when it stays
    on the GPUs, and gathered a unit at a time; offloaded, it leaves only the gathered units on the GPU."""
    def fkl(overrides):
        plan = qwen_plan("llama-70b-8b", overrides)
        return cost.estimate(plan).nodes[node_named(plan, "fkl-only").key]

    resident, offloaded = fkl({"resources.forward_kl": {"offload": False}}), fkl(None)
    assert resident.memory["frozen models"] == pytest.approx(2 * 70_553_706_496 / 8 / GIB)
    assert "frozen models" not in offloaded.memory and offloaded.fits
    assert resident.peak_gpu_memory_gib == pytest.approx(offloaded.peak_gpu_memory_gib + 16.43 + 14.96, abs=0.05)


def test_measured_lengths_replace_the_assumption(tmp_path):
    plan = qwen_plan()
    rollouts = node_named(plan, "rl-rollouts")
    folder = dag.node_dir(tmp_path, rollouts)
    folder.mkdir(parents=True)
    (folder / dag.MANIFEST).write_text(json.dumps({"status": "completed", "metrics": {
        "tokens_generated": 13918 * 1000, "mean_response_tokens": 1000.0}}))
    costs = cost.estimate(plan, tmp_path)
    fkl = costs.nodes[node_named(plan, "fkl-only").key]
    tokens = 13918 * (130 + 2 * 1000 * 2 / 3)  # the rollouts' measured length, not 0.3 x 8192, padded in pairs
    assert fkl.gpu_hours == pytest.approx((8 * P_17B + 2 * P_8B_MATMUL) * tokens / (PEAK * TRAIN) / 3600, abs=1e-3)
    raw = costs.nodes[node_named(plan, "raw-rollouts").key]  # a rollouts node not yet run borrows the measurement
    in_flight = min(256, holds(0.85 * 80, 2 * P_8B, KV_8B, 130 + 1000))  # vLLM's cap: 256 sequences at once
    compute = 2 * P_8B_MATMUL * 13918 * 1130 / (PEAK * SAMPLE)  # at 256 in flight the compute bound is the slower
    memory = decode_s(2 * P_8B, KV_8B, 1130, in_flight, 13918 * 1000)
    assert memory < compute and raw.gpu_hours == pytest.approx(compute / 3600, abs=1e-3)
    lines = cost.describe(costs, plan, {k: dag.status(tmp_path, n) for k, n in plan.nodes.items()})
    assert any(line.startswith("measured: ") and "rl-rollouts" in line for line in lines)


def test_cpu_profiles_plan_no_gpu_time(capsys):
    assert main(["plan", "--profile", "smoke", "--artifacts", "/nonexistent"]) == 0
    out = capsys.readouterr().out
    assert "device: cpu" in out and "total: 0.0 GPU-hours" in out


def test_plan_is_offline_and_fast():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}  # any network use fails
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sparse2dense.cli", "plan", "--profile", "qwen3-8b-1.7b",
                           "--artifacts", "/nonexistent"], env=env, capture_output=True, text=True, timeout=30)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stderr
    assert "GPU-hours" in done.stdout and elapsed < 5


def test_a_model_of_unknown_size_is_named_not_guessed():
    plan = qwen_plan(overrides={"models.teacher.name": "some-org/unknown-8b"})
    costs = cost.estimate(plan)
    c = costs.nodes[node_named(plan, "teacher-grpo").key]
    assert (c.gpu_hours, c.peak_gpu_memory_gib, c.fits) == (None, None, None)
    assert costs.nodes[node_named(plan, "direct-grpo").key].gpu_hours > 0  # the student's nodes still are
    lines = cost.describe(costs, plan, {})
    assert any("unknown-8b: size unknown" in line for line in lines)
    assert any("teacher-grpo" in line and "model size unknown, not estimated" in line for line in lines)
