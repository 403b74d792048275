#!/usr/bin/env bash
# Builds .peer-venv: Python 3.11 with CPU torch 2.13.0 and the reference peers
# (megatron-core, HF transformers). Tests call it by subprocess; they skip with a
# reason naming this script when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY311=""
for c in python3.11 /usr/bin/python3.11 "$HOME"/.pyenv/versions/3.11*/bin/python3.11; do
  if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then PY311="$c"; break; fi
done
[ -n "$PY311" ] || { echo "peer_venv: no Python 3.11 found; peer tests will be skipped" >&2; exit 0; }
if [ ! -x .peer-venv/bin/python ]; then "$PY311" -m venv .peer-venv; fi
.peer-venv/bin/python -m pip install -q --upgrade pip
.peer-venv/bin/python -m pip install -q "torch==2.13.0" "megatron-core==0.16.1" transformers safetensors numpy absl-py
# megatron-core's Muon runs over NVIDIA's emerging_optimizers, whose wheel (pure Python) asks for Python 3.12;
# tests/peers/megatron_muon.py adapts its two 3.12-only imports
.peer-venv/bin/python -m pip install -q --no-deps --ignore-requires-python "emerging-optimizers==0.3.0"
.peer-venv/bin/python -c "import torch, megatron.core; print('peer venv ok: torch', torch.__version__)"
