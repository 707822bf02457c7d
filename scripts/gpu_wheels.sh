#!/usr/bin/env bash
# Wheels scripts/gpu_check.py needs on a lent GPU machine, downloaded here into .whl/ (git-ignored).
#
# That machine (Python 3.12, no network) has torch, transformers, accelerate, tokenizers, numpy, pandas,
# pyarrow, pyyaml, huggingface-hub, fsspec, xxhash, sympy, jinja2 and psutil; the stages also import trl,
# datasets, pydantic and math-verify, which travel as these wheels with the dependencies the machine lacks.
# Prefect and MLflow are not needed: the check tracks nothing. vLLM is too big to carry; the check
# measures it only where `import vllm` works.
#
#   scripts/gpu_wheels.sh        # then, on the device, with .whl carried (README "GPU machines"):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/s2d/site-packages .whl/*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-$( [ -x .venv/bin/pip ] && echo .venv/bin/pip || echo "python3 -m pip" )}
WHEELS=(
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
    math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2
)
rm -rf .whl
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
ls .whl | wc -l | xargs echo "wheels in .whl/:"
du -sh .whl
