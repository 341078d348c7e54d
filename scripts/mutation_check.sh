#!/usr/bin/env bash
# Mutation check (not part of CI: it is slow). Plants small defects (mutants) in the modules whose numbers users
# read, runs the fast tests that cover each one, and prints the kill rate per module and every surviving mutant
# that is not in scripts/mutation_allowlist.txt (equivalent mutants, each with a one-line reason).
#
#   bash scripts/mutation_check.sh                 # every scoped module
#   bash scripts/mutation_check.sh stats select    # some modules only (per-module runs)
#
# Tool: mutmut (pinned in requirements-dev.txt). It runs in a scratch copy of the tracked files
# ($MUTATION_DIR, default /tmp/culnig_mutation), so the work tree gets no mutants/ folder and no mutmut config.
# Exit status: 0 when every module kills >= $MUTATION_MIN_RATE % (default 90) and no survivor is unlisted.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=$(command -v python3)
work=${MUTATION_DIR:-/tmp/culnig_mutation}
jobs=${MUTATION_JOBS:-2}
start=$SECONDS

# The scope: module -> mutant-name patterns (pipeline.py: only its condition logic).
declare -A scope=(
  [table]="culnig_ext.table.*"
  [select]="culnig_ext.select.*"
  [scorer]="culnig_ext.scorer.*"
  [inhibit]="culnig_ext.inhibit.*"
  [stats]="culnig_ext.stats.*"
  [analysis]="culnig_ext.analysis.*"
  [pipeline]="culnig_ext.pipeline.x_evaluate_conditions__mutmut_* culnig_ext.pipeline.x_instance_view__mutmut_* culnig_ext.pipeline.x_score_cached__mutmut_* culnig_ext.pipeline.x__sample__mutmut_*"
)
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(table select scorer inhibit stats analysis pipeline)
patterns=()
only=()
for m in "${modules[@]}"; do
  [ -n "${scope[$m]:-}" ] || { echo "mutation_check: unknown module '$m' (one of: ${!scope[*]})" >&2; exit 2; }
  # shellcheck disable=SC2206
  patterns+=(${scope[$m]})
  only+=("culnig_ext/$m.py")
done
# The fast tests that cover the scoped modules (the whole set runs in ~10 s on 2 idle cores).
tests=(tests/test_seams.py tests/test_scorer.py tests/test_select.py tests/test_inhibit.py tests/test_stats.py
       tests/test_analysis.py tests/test_pipeline.py tests/test_report.py tests/test_neurons.py tests/test_cli.py)

"$python" -c "import mutmut" 2>/dev/null || {
  echo "mutation_check: mutmut is not installed; run: $python -m pip install -r requirements-dev.txt" >&2; exit 2; }

rm -rf "$work"
mkdir -p "$work"
git ls-files -z | tar --null -T - -cf - | tar -C "$work" -xf -
cp culnig_ext/_C*.so "$work/culnig_ext/" 2>/dev/null || true   # the built C++ ops, when present
{
  echo "[mutmut]"
  echo "source_paths = culnig_ext"
  echo "only_mutate ="
  for f in "${only[@]}"; do echo "    $f"; done
  echo "pytest_add_cli_args_test_selection ="
  for t in "${tests[@]}"; do [ -f "$t" ] && echo "    $t"; done
  echo "pytest_add_cli_args ="
  echo "    -p"
  echo "    no:cacheprovider"
  echo "process_isolation = forkserver"
  echo "use_git_change_detection = false"
} > "$work/setup.cfg"

echo "== mutation check: ${modules[*]} (mutmut $("$python" -c 'import importlib.metadata as m; print(m.version("mutmut"))'), $jobs workers, in $work)"
(
  cd "$work"
  # One intra-op thread per worker: the tests' tiny models are faster single-threaded, and workers run in parallel.
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH= "$python" -m mutmut run --max-children "$jobs" "${patterns[@]}" \
    > "$work/mutmut_run.log" 2>&1 || { tail -50 "$work/mutmut_run.log"; echo "mutation_check: mutmut failed" >&2; exit 2; }
)
rc=0
"$python" scripts/mutation_summary.py "$work/mutants" --allowlist scripts/mutation_allowlist.txt \
  --min-rate "${MUTATION_MIN_RATE:-90}" --modules "${modules[@]}" --seconds $((SECONDS - start)) \
  --survivors-out "$work/survivors.txt" || rc=$?
if [ -s "$work/survivors.txt" ] && [ -z "${MUTATION_QUIET:-}" ]; then
  echo; echo "== the surviving mutants' diffs"
  while read -r name; do (cd "$work" && "$python" -m mutmut show "$name" 2>/dev/null) || echo "$name"; done \
    < "$work/survivors.txt"
fi
exit $rc
