"""Generation throughput on CPU: vLLM's CPU build against transformers, on the hub-smoke teacher. One JSON line.

    .venv/bin/python benchmarks/generation_figures.py [--stand-ins .hub-smoke] [--node-python .venv-node/bin/python]

Both backends sample the same prompts greedily in fp32 through the project's generators (as rollouts and
evaluation do), so they produce the same tokens (tests/test_vllm.py) and the figures compare like with like.
Tokens per second count the completion tokens over the generate call alone; loading the model (transformers)
and starting the engine (vLLM, `vllm_cpu_engine_start_s`) are timed apart. The vLLM half runs under the node
runtime (`make node-runtime`), whose Python can import vLLM.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS, MAX_NEW_TOKENS = 64, 64
TEMPLATE = {"enable_thinking": False}


def prompts() -> list:
    from sparse2dense.hub_smoke import _messages

    return [_messages(f"Compute ${a}+{b}-{a % 7}$.") for a, b in zip(range(10, 10 + PROMPTS), range(PROMPTS, 0, -1))]


def sampling():
    from sparse2dense.config import SamplingSpec

    return SamplingSpec(temperature=0, max_new_tokens=MAX_NEW_TOKENS)


def transformers_figures(model: Path) -> dict:
    from sparse2dense.config import HardwareSpec
    from sparse2dense.generation import TransformersGenerator
    from sparse2dense.models import load_model, load_tokenizer, set_threads

    hardware = HardwareSpec(device="cpu", precision="fp32")
    set_threads(hardware)
    start = time.perf_counter()
    generator = TransformersGenerator(load_model(model, hardware, trainable=False), load_tokenizer(model),
                                      chat_template_kwargs=TEMPLATE)
    loaded = time.perf_counter()
    samples = generator.generate(prompts(), sampling())
    return {"load_s": loaded - start, "generate_s": time.perf_counter() - loaded,
            "tokens": [list(group[0].token_ids) for group in samples]}


def vllm_figures(model: Path) -> dict:
    """Under the node runtime: the same prompts through VLLMGenerator."""
    from sparse2dense.config import GenerationSpec, HardwareSpec
    from sparse2dense.generation import VLLMGenerator

    start = time.perf_counter()
    generator = VLLMGenerator(model, GenerationSpec(backend="vllm", gpu_memory_utilization=0.05),
                              HardwareSpec(device="cpu", precision="fp32"), TEMPLATE, context=256)
    started = time.perf_counter()
    samples = generator.generate(prompts(), sampling())
    done = time.perf_counter()
    generator.close()
    return {"engine_start_s": started - start, "generate_s": done - started,
            "tokens": [list(group[0].token_ids) for group in samples], "version": generator.describe()["vllm"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stand-ins", type=Path, help="a built .hub-smoke-vllm folder (default: build one, ~20 s)")
    parser.add_argument("--node-python", type=Path, default=Path(".venv-node/bin/python"))
    parser.add_argument("--vllm-half", type=Path, help=argparse.SUPPRESS)  # the node runtime's part
    args = parser.parse_args()
    if args.vllm_half:
        print("VLLM_FIGURES " + json.dumps(vllm_figures(args.vllm_half)))
        return
    from sparse2dense import hub_smoke

    folder = args.stand_ins or hub_smoke.build(Path(tempfile.mkdtemp()) / "stand-ins", log=lambda _: None,
                                                 head_dim=hub_smoke.VLLM_HEAD_DIM)
    model = (folder / "models" / "teacher").resolve()
    hf = transformers_figures(model)
    done = subprocess.run([str(args.node_python), __file__, "--vllm-half", str(model)], capture_output=True,
                          text=True, timeout=900)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    [line] = [line for line in done.stdout.splitlines() if line.startswith("VLLM_FIGURES ")]
    vllm = json.loads(line.removeprefix("VLLM_FIGURES "))
    tokens = sum(map(len, hf["tokens"]))
    print(json.dumps({
        "figure": "generation_cpu", "model": "hub-smoke teacher", "prompts": PROMPTS, "max_new_tokens": MAX_NEW_TOKENS,
        "precision": "fp32", "tokens": tokens, "same_tokens": hf["tokens"] == vllm["tokens"],
        "hf_cpu_tokens_per_s": round(tokens / hf["generate_s"], 1),
        "vllm_cpu_tokens_per_s": round(sum(map(len, vllm["tokens"])) / vllm["generate_s"], 1),
        "hf_load_s": round(hf["load_s"], 2), "vllm_cpu_engine_start_s": round(vllm["engine_start_s"], 1),
        "vllm": vllm["version"]}))


if __name__ == "__main__":  # vLLM's engine starts worker processes that re-import this module
    main()
