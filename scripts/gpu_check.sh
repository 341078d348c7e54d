#!/usr/bin/env bash
# The one unattended GPU check of the culnig ops and scorer: one try, bounded, every result kept.
#
#   scripts/gpu_check.sh [OUT] [--smoke] [--deadline SECONDS]
#
# OUT: the output folder; default $OUT if set (a device machine brings back only what is written under it), else
# ${TMPDIR:-/tmp}/culnig_gpu_check (never inside the repository). One overall deadline, default 480 s
# ($GPU_CHECK_DEADLINE or --deadline), for a machine where one command may run at most 600 s. Every step is
# bounded by what remains of it: benchmarks/gpu_check.py runs under `timeout` (the deadline plus 20 s for the
# last writes) and runs each of its subprocess steps under `timeout` with what remains; a section that
# would start with too little time left is recorded as "skipped: deadline".
# Steps, in order (benchmarks/gpu_check.py has the details): environment (GPU, driver, torch, CUDA); the JIT build
# (timed; every later step loads what it left in the cache); the CUDA-marked tests; the fused op at N = 14336 /
# 4096 / 1024 in bf16 and fp32 (fused vs reference vs plain, GB/s, % of read-once); a > 2^31-element input made
# on the device; score() vs a frozen forward+backward on a Llama-3-8B-shaped and a Qwen2-7B-shaped random model
# (>= 4 timed batches after a warm-up one); a 2-GPU torchrun (only with 2 GPUs); the AOT build (timed).
# Each section rewrites OUT/gpu_check.json and OUT/gpu_check.md (atomically) when it ends; the logs of the
# subprocess steps are OUT/<step>.log, this script's output OUT/gpu_check.log.
# --smoke: the same code paths on the CPU with tiny shapes in under a minute (tests/integration/test_gpu_check.py).
# Environment: PY (interpreter, default python3), GPU_CHECK_DEADLINE, GPU_CHECK_SECTIONS, GPU_CHECK_FAIL (see gpu_check.py),
# MAX_JOBS, TORCH_EXTENSIONS_DIR. Exit status: 0 if every section is ok, 1 if any failed or hit the deadline,
# 124 if the whole run had to be killed.
set -uo pipefail
export PYTHONUNBUFFERED=1

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST=""
SMOKE=""
DEADLINE="${GPU_CHECK_DEADLINE:-480}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) SMOKE=--smoke ;;
    --deadline) DEADLINE="${2:?--deadline needs seconds}"; shift ;;
    --deadline=*) DEADLINE="${1#--deadline=}" ;;
    -h|--help) sed -n '2,23p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
    *) DEST="$1" ;;
  esac
  shift
done
if ! [[ "$DEADLINE" =~ ^[0-9]+$ ]] || [[ "$DEADLINE" -lt 1 ]]; then
  echo "gpu_check: the deadline must be a whole number of seconds >= 1, got '$DEADLINE'" >&2
  exit 2
fi
start_epoch=$(date +%s)
deadline_at=$((start_epoch + DEADLINE))
DEST="${DEST:-${OUT:-${TMPDIR:-/tmp}/culnig_gpu_check}}"
mkdir -p "$DEST" || { echo "gpu_check: cannot create the output folder $DEST" >&2; exit 2; }
DEST="$(cd "$DEST" && pwd)"
PY="${PY:-python3}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"
echo "== gpu_check: output in $DEST, deadline ${DEADLINE} s, python $PY ${SMOKE}"
timeout --kill-after=5 $((DEADLINE + 20)) "$PY" -u benchmarks/gpu_check.py --out "$DEST" --deadline-at "$deadline_at" \
  $SMOKE 2>&1 | tee "$DEST/gpu_check.log"
rc=${PIPESTATUS[0]}
if [[ $rc == 124 || $rc == 137 ]]; then
  echo "gpu_check: killed at the deadline + 20 s; the sections finished before are in $DEST/gpu_check.md" >&2
  rc=124
fi
echo "== gpu_check: exit $rc after $(( $(date +%s) - start_epoch )) s; results in $DEST/gpu_check.md"
exit $rc
