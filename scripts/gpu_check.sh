#!/usr/bin/env bash
# One prepared GPU check of the culnig ops and scorer, writing one Markdown table.
#
#   scripts/gpu_check.sh [OUT_DIR] [--smoke]        (OUT_DIR default: gpu_check_out in the repo, gitignored)
#
# On one H100/H200 whose image has torch (CUDA), transformers and ninja, no network, within ~8 minutes:
#   1. builds the extension in place (setup.py build_ext --inplace; TORCH_CUDA_ARCH_LIST default "9.0") and checks
#      that the CUDA kernels are registered;
#   2. runs tests/kernels/test_ops_cuda.py (the ops against the oracle, CUDA-graph capture, the GPU scorer);
#   3. runs benchmarks/gpu_check.py: bench_ops at B=16 T=2048 N=14336 (bf16, fp32: GB/s vs reading the inputs once)
#      and bench_scoring's variants on a Llama-3-8B-shaped model with random bf16 weights (tokens/s vs a bare frozen
#      forward+backward and a forward, the op's share of the step, peak memory, with/without checkpointing);
#   4. writes OUT_DIR/gpu_check.md (the table; copy it into the README) and gpu_check.json, plus the logs.
# --smoke: the same steps end to end on the CPU with small shapes (no build: uses the extension as it loads), so the
# script never rots; tests/integration/test_gpu_check.py runs it. Every step runs even if an earlier one failed (the table says
# which); the exit status is non-zero if any failed. Environment: PYTHON (default python), TORCH_CUDA_ARCH_LIST,
# MAX_JOBS (default: all cores).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT=""
SMOKE=0
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "gpu_check: unknown option $arg" >&2; exit 2 ;;
    *) OUT="$arg" ;;
  esac
done
OUT="${OUT:-$REPO/gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"
start=$SECONDS
failed=0
say() { echo "== [gpu_check $((SECONDS - start)) s] $*"; }

# 1. build ------------------------------------------------------------------------------------------------------
if [[ $SMOKE == 1 ]]; then
  build="ok (smoke: not rebuilt, the extension as it loads)"
else
  say "building the extension (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0})"
  if TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      timeout 300 "$PY" setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1; then
    build="ok in $((SECONDS - start)) s"
  else
    build="FAILED (see build.log)"
    failed=1
    tail -n 30 "$OUT/build.log"
  fi
fi
device=$([[ $SMOKE == 1 ]] && echo cpu || echo cuda)
if ! "$PY" -c "import sys, culnig_ext.kernels.ops as o; b = o.backend('$device'); print('backend', b, o.LOAD); sys.exit(b == 'reference')" \
    >> "$OUT/build.log" 2>&1; then
  build="$build; but the fused $device kernels did not load (see build.log)"
  failed=1
fi
say "build: $build"

# 2. tests ------------------------------------------------------------------------------------------------------
say "tests/kernels/test_ops_cuda.py"
timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/kernels/test_ops_cuda.py > "$OUT/tests.log" 2>&1
rc=$?
tests="$(grep -E '(passed|failed|skipped|error)' "$OUT/tests.log" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//')"
[[ -z "$tests" ]] && tests="no summary (exit $rc, see tests.log)"
if [[ $rc != 0 ]]; then failed=1; tail -n 30 "$OUT/tests.log"; fi
say "tests: $tests"

# 3. benchmarks and the table -------------------------------------------------------------------------------------
say "benchmarks"
smoke_flag=$([[ $SMOKE == 1 ]] && echo --smoke || true)
if ! timeout 420 "$PY" benchmarks/gpu_check.py --out "$OUT" $smoke_flag --build "$build" --tests "$tests" \
    2>&1 | tee "$OUT/bench.log"; then
  failed=1
  echo "gpu_check: the benchmarks failed (see $OUT/bench.log)" >&2
fi
say "done; table in $OUT/gpu_check.md"
exit $failed
