#!/usr/bin/env bash
# Create (or refresh) .venv with the tested CPU stack, then install this package in editable mode.
#
# Idempotent: each step is skipped when its result is already present. Safe to run repeatedly.
# Usage: scripts/setup_env.sh [VENV_DIR]       (default: .venv next to this repository's setup.py)
# GPU users: see docs/installation.md (CUDA torch + mmcv built with FORCE_CUDA=1).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv}"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3

export PIP_CONSTRAINT="$repo_root/requirements/constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1

stamp="$venv/.omg_llava_setup_done"
if [[ -f "$stamp" && "$stamp" -nt "$PIP_CONSTRAINT" && "$stamp" -nt "$repo_root/setup.py" \
      && "$stamp" -nt "$repo_root/scripts/setup_env.sh" ]]; then
  exit 0
fi

log() { printf '[setup_env] %s\n' "$*" >&2; }

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv with $python_bin"
  "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --quiet)
has() { "$venv/bin/python" -c "$1" >/dev/null 2>&1; }

log "1/6 torch (CPU) and build tooling"
"${pip[@]}" torch==2.13.0 "setuptools<81" wheel ninja numpy psutil opencv-python

log "2/6 mmcv 2.1.0 with compiled ops (about 5 min on a cold pip cache)"
if ! has "import mmcv.ops"; then
  MMCV_WITH_OPS=1 MAX_JOBS=2 CFLAGS=-g0 "${pip[@]}" --no-build-isolation mmcv==2.1.0
fi
has "import mmcv.ops" || { log "mmcv was installed without its compiled ops (mmcv.ops does not import)"; exit 1; }

log "3/6 mmengine, mmdet"
"${pip[@]}" mmengine mmdet

log "4/6 transformers stack and xtuner (--no-deps: its metadata pulls 100+ packages)"
"${pip[@]}" transformers peft accelerate datasets einops sentencepiece tiktoken scipy \
  kornia pycocotools safetensors scikit-image imgviz pytest pytest-timeout gradio pycocoevalcap
"${pip[@]}" --no-deps xtuner

log "5/6 deepspeed (pure Python, ops compiled on demand only)"
has "import deepspeed" || DS_BUILD_OPS=0 "${pip[@]}" --no-build-isolation deepspeed

log "6/6 omg_llava (editable)"
"${pip[@]}" --no-build-isolation --no-deps -e "$repo_root"
"$venv/bin/python" -c "import omg_llava, mmcv.ops, mmdet.models, xtuner, transformers, peft, kornia"
touch "$stamp"
log "done: $venv"
