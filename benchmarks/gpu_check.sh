#!/usr/bin/env bash
# The GPU check: one command on a GPU machine, under 5 minutes, no network.
#
#   benchmarks/gpu_check.sh            # from anywhere; OUT=dir to keep the results
#
# 1. builds the C++ extension in place against the installed torch (pip
#    editable install with --no-build-isolation; falls back to
#    `setup.py build_ext --inplace`), under a timeout, installing nothing;
# 2. runs the CUDA tests first (`pytest -m cuda`: the Triton kernels on the
#    device against the CPU path, multi-channel, CUDA-graph capture);
# 3. runs the GPU benchmark and validation (benchmarks/bench_gpu.py) with
#    what is left of the budget: bench_gpu.md / bench_gpu.json under $OUT
#    (else benchmarks/out/), the table appended to benchmarks/RESULTS.md;
# 4. with GPU_CHECK_FULL=1 and time left, the rest of the test suite.
# Exit status: non-zero when the build, a CUDA test or a correctness row fails.
#
# Environment: PYTHON (default python3), OUT, GPU_CHECK_BUDGET (s, default
# 290, the whole run), GPU_CHECK_BUILD_TIMEOUT (s, default 150),
# GPU_CHECK_TEST_TIMEOUT (s, default 60). GPU_CHECK_DRY_RUN=1 checks this
# script on a machine without a GPU: no build (the extension must exist), the
# CUDA tests (skipped there) and the benchmark's CPU dry run.
set -euo pipefail
export PYTHONUNBUFFERED=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
DRY="${GPU_CHECK_DRY_RUN:-0}"
BUDGET="${GPU_CHECK_BUDGET:-290}"
T_BUILD="${GPU_CHECK_BUILD_TIMEOUT:-150}"
T_TESTS="${GPU_CHECK_TEST_TIMEOUT:-60}"
START=$(date +%s)
status=0
LINK=""

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  exec > >(tee "$OUT/gpu_check.log") 2>&1
fi

cleanup() {
  # The in-place fallback links the Triton kernels into the package; undo it.
  if [[ -n "$LINK" && -L "$LINK" ]]; then rm -f "$LINK"; fi
}
trap cleanup EXIT

step() { echo; echo "=== [gpu_check $(( $(date +%s) - START )) s] $*"; }

step "environment"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'EOF'
import platform, torch
try:
    import triton
    tv = triton.__version__
except Exception as exc:  # reported, the tests will say more
    tv = f"not importable ({exc})"
print(f"python {platform.python_version()}  torch {torch.__version__}  triton {tv}  "
      f"cuda {torch.version.cuda}  available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0))
EOF
if [[ "$DRY" != "1" ]]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_check: torch sees no CUDA device (set GPU_CHECK_DRY_RUN=1 to check the script)"; exit 1; }
fi

# importable: the extension and deconv_ext.triton_kernels (setup.py maps the
# top-level triton_kernels/ folder into the package).
importable() {
  "$PY" -c "import deconv_ext._C, deconv_ext.triton_kernels as t; t.spectral_solve" >/dev/null 2>&1
}

if [[ "$DRY" != "1" ]]; then
  step "build (in place, --no-build-isolation, against torch $("$PY" -c 'import torch; print(torch.__version__)'), timeout ${T_BUILD} s)"
  export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  # No index, no build isolation: nothing is downloaded. PIP_BREAK_SYSTEM_PACKAGES
  # lets pip write its editable finder into an externally managed Python.
  if PIP_NO_INDEX=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
      timeout "$T_BUILD" "$PY" -m pip install --no-build-isolation --no-deps -q -e . && importable; then
    echo "built: pip editable install"
  else
    echo "pip editable install unavailable or incomplete; falling back to build_ext --inplace"
    t=$(( T_BUILD - ($(date +%s) - START) ))
    (( t > 30 )) || t=30
    timeout "$t" "$PY" setup.py -q build_ext --inplace \
      || { echo "gpu_check: build failed or timed out"; exit 1; }
    # An in-place build has no editable finder to map deconv_ext.triton_kernels
    # onto ./triton_kernels: link it into the package for this run.
    if ! importable && [[ ! -e deconv_ext/triton_kernels ]]; then
      ln -s ../triton_kernels deconv_ext/triton_kernels
      LINK="deconv_ext/triton_kernels"
    fi
    importable || { echo "gpu_check: deconv_ext is not importable after the build"; exit 1; }
    echo "built: build_ext --inplace${LINK:+ (+ link $LINK)}"
  fi
fi

step "CUDA tests (pytest -m cuda, timeout ${T_TESTS} s)"
timeout --signal=INT "$T_TESTS" "$PY" -m pytest tests/test_triton.py tests/test_triton_backend.py \
    -q -m cuda -p no:cacheprovider -p no:xdist -rs \
  || { rc=$?; [[ $rc == 5 && "$DRY" == "1" ]] || { echo "gpu_check: CUDA tests failed or timed out (exit $rc)"; status=1; }; }

T_BENCH=$(( $(left) - 15 ))
step "benchmark (budget ${T_BENCH} s)"
bench_args=(--budget "$(( T_BENCH > 20 ? T_BENCH - 10 : 10 ))")
[[ "$DRY" == "1" ]] && bench_args+=(--device cpu --dry-run)
BENCH_OUT="${OUT:-$ROOT/benchmarks/out}"
if (( T_BENCH > 20 )); then
  timeout --signal=INT "$T_BENCH" "$PY" benchmarks/bench_gpu.py "${bench_args[@]}" --out "$BENCH_OUT" \
    || { rc=$?; echo "gpu_check: benchmark reported failures or timed out (exit $rc)"; status=1; }
else
  echo "gpu_check: no time left for the benchmark"; status=1
fi

if [[ -f "$BENCH_OUT/bench_gpu.md" && "$DRY" != "1" ]]; then
  { echo; echo "## $(date -u +%Y-%m-%d) gpu_check"; echo; cat "$BENCH_OUT/bench_gpu.md"; } >> benchmarks/RESULTS.md
  echo "appended to benchmarks/RESULTS.md"
fi

if [[ "${GPU_CHECK_FULL:-0}" == "1" ]] && (( $(left) > 30 )); then
  step "remaining tests (timeout $(( $(left) - 5 )) s)"
  timeout --signal=INT "$(( $(left) - 5 ))" "$PY" -m pytest tests -q -x -m "not slow and not cuda" \
      -p no:cacheprovider || { rc=$?; echo "gpu_check: tests failed or timed out (exit $rc)"; status=1; }
fi

step "done (exit $status)"
exit "$status"
