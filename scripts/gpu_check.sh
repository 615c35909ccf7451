#!/usr/bin/env bash
# fastft GPU check: one command, <= 8 minutes on an H200. Run it on the GPU machine from any folder
# (it works in the checkout that holds this script):
#
#     bash scripts/gpu_check.sh
#
# Steps, in order, each with its own timeout inside one overall budget (GPU_CHECK_BUDGET_S, default 470 s):
#   env       nvidia-smi, nvcc, python/torch/triton/transformers/peft versions
#   build     pip install --no-build-isolation --no-deps -e . (CUDA extension, sm_90), then a check that
#             fastft._C has CUDA kernels; if the editable install is unusable: setup.py build_ext --inplace
#   probes    scripts/gpu_probes.py: the review's GPU risks as JSON lines (probes.jsonl)
#   pytest    pytest -m gpu, then the device-parametrised kernel tests (they run on CUDA when present)
#   bench     python -m bench --quick for every part, then the e2e bert_cls scenario (with plots)
# A step starts only if the time left covers its expected duration; otherwise it is SKIPPED, never half-run.
# Output under $OUT (or bench/results/gpu_check-<time>/ when OUT is unset), at most 8 files:
#   summary.txt env.log build.log probes.jsonl pytest.log bench.log bench.tar.gz (json/md/png of the bench)
# GPU_CHECK_ONLY="probes pytest_gpu" runs only the named steps (env always runs).
set -uo pipefail

# A relative OUT is the caller's; everything else runs in the repo this script belongs to.
[ -n "${OUT:-}" ] && OUT=$(realpath -m -- "$OUT")
cd "$(dirname "$(realpath -- "${BASH_SOURCE[0]}")")/.." || exit 2
if [ ! -f pyproject.toml ] || ! grep -qs '^name = "fastft"' pyproject.toml; then
  echo "gpu_check.sh: $PWD is not a fastft checkout (scripts/gpu_check.sh must stay in one)" >&2
  exit 2
fi
OUT=${OUT:-$PWD/bench/results/gpu_check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
T0=$(date +%s)
DEADLINE=$((T0 + ${GPU_CHECK_BUDGET_S:-470}))
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/fastft-triton-cache}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export FASTFT_BUILD_CUDA=1
export MAX_JOBS=${MAX_JOBS:-16}
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -Xptxas -v" # registers/spills of csrc/adamw_cuda.cu in build.log
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
# fastft/kernels is a link to ../kernels in a checkout (it is not committed); the editable install maps it too
[ -d fastft ] && [ ! -e fastft/kernels ] && ln -s ../kernels fastft/kernels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

note() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$SUMMARY"; }

# step NAME NEED_S CAP_S LOG CMD... : run CMD (output appended to $OUT/LOG) with timeout min(CAP, time left)
# when at least NEED_S seconds are left, else record a SKIP. Returns CMD's status (99 skipped, 98 not selected).
step() {
  local name=$1 need=$2 cap=$3 log=$OUT/$4
  shift 4
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]]; then return 98; fi
  local left=$((DEADLINE - $(date +%s)))
  if [ "$left" -lt "$need" ]; then
    note "SKIP $name: ${left}s left < ${need}s needed"
    return 99
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  note "START $name (timeout ${cap}s)"
  echo "===== $name: $*" >>"$log"
  local t=$SECONDS rc
  if declare -F "$1" >/dev/null; then # a function of this script: run it in a child bash (exported below)
    timeout --kill-after=5 "$cap" bash -c '"$@"' _ "$@" >>"$log" 2>&1
  else
    timeout --kill-after=5 "$cap" "$@" >>"$log" 2>&1
  fi
  rc=$?
  note "END $name rc=$rc$([ "$rc" -eq 124 ] && echo ' TIMEOUT') in $((SECONDS - t))s: $(tail -n 1 "$log" | cut -c1-160)"
  return "$rc"
}

env_info() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm --format=csv 2>&1
  command -v nvcc && nvcc --version | tail -n 2
  echo "CUDA_HOME=${CUDA_HOME:-} nproc=$(nproc)"
  gcc --version 2>&1 | head -n 1
  git rev-parse HEAD 2>/dev/null
  git status --short 2>/dev/null | head -n 20
  "$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
for m in ("torch", "triton", "transformers", "peft", "setuptools", "ninja", "pytest", "pytest_timeout",
          "datasets", "sklearn", "safetensors", "tqdm", "matplotlib", "numpy", "yaml"):
    try:
        print(f"{m:15s} {getattr(importlib.import_module(m), '__version__', 'ok')}")
    except Exception as e:
        print(f"{m:15s} MISSING ({type(e).__name__})")
import torch
print("torch.version.cuda", torch.version.cuda, "cuda available", torch.cuda.is_available())
EOF
}

build_check() {
  "$PY" - <<'EOF'
import torch
import fastft, fastft._C, fastft.kernels.attention  # noqa: F401
ok = torch._C._dispatch_has_kernel_for_dispatch_key("fastft::fused_adamw_", "CUDA")
print("fastft from", fastft.__file__, "| fastft._C CUDA kernels registered:", ok)
raise SystemExit(0 if ok else 3)
EOF
}

build() {
  "$PY" -m pip install -v --no-build-isolation --no-deps -e . || echo "pip install -e . failed"
  build_check && return 0
  echo "editable install has no CUDA kernels: trying setup.py build_ext --inplace"
  FASTFT_REQUIRE_CUDA=1 "$PY" setup.py build_ext --inplace && build_check
}

run_pytest() { # the gpu-marked tests, then every device-fixture kernel test (they take CUDA when present)
  local to=() rc=0
  "$PY" -c "import pytest_timeout" 2>/dev/null && to=(--timeout=120)
  "$PY" -m pytest -m gpu -q -rfE -p no:cacheprovider "${to[@]}" tests || rc=$?
  echo "pytest -m gpu rc=$rc"
  return "$rc"
}

run_device_tests() {
  local to=()
  "$PY" -c "import pytest_timeout" 2>/dev/null && to=(--timeout=120)
  "$PY" -m pytest -q -rfE -p no:cacheprovider "${to[@]}" -m "not gpu and not slow and not benchmark and not distributed" \
    tests/kernels tests/ops tests/lora/test_functional.py tests/patching/test_loss_patch.py
}

export PY OUT
export -f build build_check run_pytest run_device_tests

# ------------------------------------------------------------------------------------------------ steps
env_info >"$OUT/env.log" 2>&1
note "env: $(grep -m1 -iE 'h200|h100|nvidia' "$OUT/env.log" | cut -c1-120)"

step build 60 200 build.log build
note "build check: $(grep -h 'CUDA kernels registered' "$OUT/build.log" 2>/dev/null | tail -n 1)"

step probes 60 150 probes.log "$PY" scripts/gpu_probes.py --probe-timeout 45
if [ -f "$OUT/probes.log" ]; then
  grep -h '^{' "$OUT/probes.log" >"$OUT/probes.jsonl"
  grep -h '"status": "FAIL"' "$OUT/probes.jsonl" | cut -c1-300 | while read -r l; do note "PROBE FAIL: $l"; done
  { echo "===== probes: stderr"; grep -v '^{' "$OUT/probes.log" | tail -n 60; } >>"$OUT/env.log"
  rm -f "$OUT/probes.log"
fi

step pytest_gpu 45 120 pytest.log run_pytest
step pytest_device 40 100 pytest.log run_device_tests

step bench_parts 45 100 bench.log "$PY" -m bench --quick --parts adamw,losses,attention,lora --out "$OUT/bench" --no-plots
step bench_e2e 30 80 bench.log env FASTFT_BENCH_E2E=bert_cls "$PY" -m bench --quick --parts e2e --out "$OUT/bench"

if [ -d "$OUT/bench" ]; then
  tar -C "$OUT" -czf "$OUT/bench.tar.gz" bench && rm -rf "$OUT/bench"
fi
note "done in $(($(date +%s) - T0))s; files: $(cd "$OUT" && echo *)"
