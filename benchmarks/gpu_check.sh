#!/usr/bin/env bash
# The GPU check: one command on a GPU machine, under 5 minutes, no network.
#
#   benchmarks/gpu_check.sh            # from anywhere; OUT=dir to keep the results
#
# 1. builds the C++ extension in place against the installed torch
#    (pip editable install with --no-build-isolation; falls back to
#    `setup.py build_ext --inplace`), installing nothing else;
# 2. runs the test suite with CUDA available (`-m "not slow"`, so the
#    @pytest.mark.cuda tests run too);
# 3. runs the GPU benchmark (benchmarks/bench_gpu.py), prints its table last,
#    writes bench_gpu.md / bench_gpu.json (and this log) under $OUT when set,
#    and appends the table to benchmarks/RESULTS.md with the date and card.
#
# Environment: PYTHON (default python3), OUT, GPU_CHECK_TEST_TIMEOUT (s,
# default 170), GPU_CHECK_BENCH_TIMEOUT (s, default 150).
# GPU_CHECK_DRY_RUN=1 checks this script on a machine without a GPU: no
# build (the extension must exist), only tests/test_triton.py, and the
# benchmark's CPU dry run.
set -euo pipefail
export PYTHONUNBUFFERED=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
DRY="${GPU_CHECK_DRY_RUN:-0}"
T_TESTS="${GPU_CHECK_TEST_TIMEOUT:-170}"
T_BENCH="${GPU_CHECK_BENCH_TIMEOUT:-150}"
START=$(date +%s)
status=0
LINK=""

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
  step "build (in place, --no-build-isolation, against torch $("$PY" -c 'import torch; print(torch.__version__)'))"
  export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  # No index, no build isolation: nothing is downloaded. PIP_BREAK_SYSTEM_PACKAGES
  # lets pip write its editable finder into an externally managed Python.
  if PIP_NO_INDEX=1 PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
      "$PY" -m pip install --no-build-isolation --no-deps -q -e . && importable; then
    echo "built: pip editable install"
  else
    echo "pip editable install unavailable or incomplete; falling back to build_ext --inplace"
    "$PY" setup.py -q build_ext --inplace
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

step "tests"
if [[ "$DRY" == "1" ]]; then
  tests=(tests/test_triton.py)
else
  tests=(tests)
fi
timeout --signal=INT "$T_TESTS" "$PY" -m pytest "${tests[@]}" -q -x -m "not slow" -p no:cacheprovider \
  || { rc=$?; echo "gpu_check: tests failed or timed out (exit $rc)"; status=1; }

step "benchmark"
bench_args=()
[[ "$DRY" == "1" ]] && bench_args=(--device cpu --dry-run)
BENCH_OUT="${OUT:-$(mktemp -d)}"
timeout --signal=INT "$T_BENCH" "$PY" benchmarks/bench_gpu.py "${bench_args[@]}" --out "$BENCH_OUT" \
  || { rc=$?; echo "gpu_check: benchmark failed or timed out (exit $rc)"; status=1; }

if [[ -f "$BENCH_OUT/bench_gpu.md" && "$DRY" != "1" ]]; then
  { echo; echo "## $(date -u +%Y-%m-%d) gpu_check"; echo; cat "$BENCH_OUT/bench_gpu.md"; } >> benchmarks/RESULTS.md
  echo "appended to benchmarks/RESULTS.md"
fi

step "done (exit $status)"
exit "$status"
