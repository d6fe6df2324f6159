#!/usr/bin/env bash
# Create (or refresh) a venv with one of the two tested CPU stacks, then install this package in editable mode.
#
# Usage: scripts/setup_env.sh [VENV_DIR] [STACK]
#   VENV_DIR  default: .venv next to this repository's setup.py
#   STACK     newest (default): the newest stack on which the whole test suite passes (transformers 5.x),
#                               pinned in requirements/constraints.txt
#             oldest:           the oldest supported pins (transformers 4.48), requirements/constraints-oldest.txt
# Idempotent: each step is skipped when its result is already present; an existing venv is moved to the asked stack.
# GPU users: see docs/installation.md (CUDA torch + mmcv built with FORCE_CUDA=1).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv}"
stack="${2:-newest}"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3

case "$stack" in
  newest) constraints="$repo_root/requirements/constraints.txt" ;;
  oldest) constraints="$repo_root/requirements/constraints-oldest.txt" ;;
  *) echo "[setup_env] unknown stack '$stack': use newest (default) or oldest" >&2; exit 2 ;;
esac
export PIP_CONSTRAINT="$constraints"
export PIP_DISABLE_PIP_VERSION_CHECK=1

stamp="$venv/.omg_llava_setup_done"  # holds the stack name
if [[ -f "$stamp" && "$(cat "$stamp")" == "$stack" && "$stamp" -nt "$PIP_CONSTRAINT" \
      && "$stamp" -nt "$repo_root/setup.py" && "$stamp" -nt "$repo_root/scripts/setup_env.sh" ]]; then
  exit 0
fi

log() { printf '[setup_env] %s\n' "$*" >&2; }

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv with $python_bin"
  "$python_bin" -m venv "$venv"
fi
log "stack: $stack ($(basename "$PIP_CONSTRAINT"))"
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
"${pip[@]}" transformers tokenizers huggingface_hub peft accelerate datasets einops sentencepiece tiktoken scipy \
  kornia pycocotools safetensors scikit-image imgviz pytest pytest-timeout gradio pycocoevalcap ruff
"${pip[@]}" --no-deps xtuner

log "5/6 deepspeed (pure Python, ops compiled on demand only)"
has "import deepspeed" || DS_BUILD_OPS=0 "${pip[@]}" --no-build-isolation deepspeed

log "6/6 omg_llava (editable)"
"${pip[@]}" --no-build-isolation --no-deps -e "$repo_root"
"$venv/bin/python" -c "import omg_llava, mmcv.ops, mmdet.models, xtuner, transformers, peft, kornia"
"$venv/bin/ruff" --version >/dev/null  # the linter of `make lint` / `make test`
echo "$stack" > "$stamp"
log "done: $venv ($stack stack, transformers $("$venv/bin/python" -c 'import transformers; print(transformers.__version__)'))"
