#!/usr/bin/env bash
# Mutation check (not part of CI: it is slow). mutmut plants small defects (mutants) in the modules whose numbers
# users read and runs the fast tests that cover each one; this prints the kill rate per module and every
# surviving mutant that is not in scripts/mutation_allowlist.txt (equivalent mutants, one-line reason each).
#
#   bash scripts/mutation_check.sh                   # every scoped module, one after the other
#   bash scripts/mutation_check.sh stats select      # some modules only
#   bash scripts/mutation_check.sh --all             # the whole package: the keys below, then one run per stage
#   bash scripts/mutation_check.sh stage.stats       # one stage's other modules (scripts/mutation_scope.py)
#   MUTATION_SUMMARY_ONLY=1 bash scripts/mutation_check.sh   # summarise earlier (e.g. per-module) runs again
#   MUTATION_RERUN=1 bash scripts/mutation_check.sh stats    # re-check only the last run's survivors (new tests)
#
# Each module runs in its own scratch copy of the tracked files ($MUTATION_DIR/<module>, default
# /tmp/culnig_mutation), with its own test selection, so the work tree gets no mutants/ folder and no mutmut
# config. Mutated: every function of the module, except `pipeline`, the condition logic the pipeline composes
# (studies/conditions.evaluate_conditions, which inhibits each condition, and the helpers that feed the report:
# studies/pipeline.instance_view, scoring/cache.score_cached, data/splits.sample_items, _utils/names.slug). Not mutated: statements that only raise an error, warn, print or log (their
# messages; the bad-input tests check the errors), and progress-bar lines.
# The whole package (--all): every module not in a key below is in a "stage.<folder>" key found by
# scripts/mutation_scope.py (its stage's files, covered by tests/<stage>/ and every test importing them), so a new
# module is in scope the day it lands; the summary prints one row per file.
# Exit status: 0 when every module kills >= $MUTATION_MIN_RATE % (default 90) of its mutants, equivalent
# (allow-listed) ones counted as survivors (the raw rate), at most $MUTATION_MAX_EQUIVALENT % (default 10) of its
# mutants are allow-listed, and no survivor is unlisted. Tool: mutmut, pinned in requirements-dev.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=$(command -v python3)
work=${MUTATION_DIR:-/tmp/culnig_mutation}
jobs=${MUTATION_JOBS:-2}
start=$SECONDS

declare -A scope=(
  [table]="culnig_ext.scoring.table.*"
  [select]="culnig_ext.selection.culnig.*"
  [scorer]="culnig_ext.scoring.scorer.*"
  [inhibit]="culnig_ext.intervention.inhibit.*"
  [stats]="culnig_ext.stats.bootstrap.*"
  [analysis]="culnig_ext.reporting.analysis.*"
  [pipeline]="culnig_ext.studies.conditions.x_evaluate_conditions__mutmut_* culnig_ext.studies.pipeline.x_instance_view__mutmut_*
              culnig_ext.scoring.cache.x_score_cached__mutmut_* culnig_ext.data.splits.x_sample_items__mutmut_*
              culnig_ext._utils.names.x_slug__mutmut_*"
  [recovery]="culnig_ext.stats.recovery.*"
  [verdict]="culnig_ext.stats.verdict.*"
  [lape]="culnig_ext.selection.lape.*"
)
# The files each module's mutants are planted in (paths under culnig_ext/).
declare -A files=(
  [table]="scoring/table.py"
  [select]="selection/culnig.py"
  [scorer]="scoring/scorer.py"
  [inhibit]="intervention/inhibit.py"
  [stats]="stats/bootstrap.py"
  [analysis]="reporting/analysis.py"
  [pipeline]="studies/conditions.py studies/pipeline.py scoring/cache.py data/splits.py _utils/names.py"
  [recovery]="stats/recovery.py"
  [verdict]="stats/verdict.py"
  [lape]="selection/lape.py"
)
# The fast tests that cover each module (all of them together run in ~30 s on 2 idle cores).
declare -A covering=(
  [table]="tests/scoring/test_table.py tests/integration/test_seams.py tests/reporting/test_analysis_edges.py tests/scoring/test_scorer.py
           tests/data/test_frames.py"
  [select]="tests/selection/test_culnig.py tests/selection/test_culnig_edges.py tests/integration/test_seams.py"
  [scorer]="tests/scoring/test_scorer_edges.py tests/scoring/test_scorer.py tests/scoring/test_scorer_mutants.py tests/integration/test_seams.py
            tests/scoring/test_families.py tests/models/test_checkpointing.py tests/models/test_wrapped.py"
  [inhibit]="tests/intervention/test_inhibit_edges.py tests/intervention/test_inhibit.py tests/reporting/test_analysis.py tests/scoring/test_families.py"
  [stats]="tests/stats/test_bootstrap_edges.py tests/stats/test_bootstrap.py tests/integration/test_seams.py"
  [analysis]="tests/reporting/test_analysis_edges.py tests/reporting/test_analysis.py tests/integration/test_seams_pipeline.py"
  [pipeline]="tests/studies/test_pipeline_parts.py tests/integration/test_seams_pipeline.py tests/studies/test_pipeline.py"
  [recovery]="tests/stats/test_recovery.py tests/stats/test_recovery_edges.py"
  [verdict]="tests/stats/test_verdict.py tests/stats/test_verdict_edges.py"
  [lape]="tests/selection/test_lape.py tests/selection/test_lape_properties.py tests/selection/test_lape_edges.py"
)
# The stages' keys (scripts/mutation_scope.py): "stage.<folder>" -> its files and covering tests
deselect=()
while IFS=$'\t' read -r stage stage_files stage_tests; do
  [ "$stage" = --deselect ] && { read -r -a deselect <<< "$stage_files"; continue; }
  scope[stage.$stage]="culnig_ext.*"
  files[stage.$stage]=$stage_files
  covering[stage.$stage]=$stage_tests
  [ -n "$stage_tests" ] || { echo "mutation_check: no test covers culnig_ext/$stage ($stage_files)" >&2; exit 2; }
done < <("$python" scripts/mutation_scope.py)
hand_written=(table select scorer inhibit stats analysis pipeline recovery verdict lape)
modules=("$@")
if [ "${modules[*]:-}" = "--all" ]; then
  # the hand-written keys (pipeline's functions are in its stages' rows too), then every stage
  modules=(table select scorer inhibit stats analysis recovery verdict lape)
  for key in $(printf '%s\n' "${!scope[@]}" | grep '^stage\.' | sort); do modules+=("$key"); done
fi
[ ${#modules[@]} -gt 0 ] || modules=("${hand_written[@]}")
for m in "${modules[@]}"; do
  [ -n "${scope[$m]:-}" ] || { echo "mutation_check: unknown module '$m' (one of: ${!scope[*]})" >&2; exit 2; }
done
"$python" -c "import mutmut" 2>/dev/null || {
  echo "mutation_check: mutmut is not installed; run: $python -m pip install -r requirements-dev.txt" >&2; exit 2; }
echo "== mutation check: ${modules[*]} (mutmut $("$python" -c 'import importlib.metadata as m; print(m.version("mutmut"))'), $jobs workers, in $work)"

# CPU seconds (user + system) used by this script's finished children, into $cpu: on a loaded machine wall time
# says little. ("times" must run in this shell, not in a pipe or $(...), to see the children.)
measure_cpu() {
  times > "$work/.times"
  cpu=$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += 60 * a[1] + a[2] }
                       printf "%.0f", t }' "$work/.times")
}
runs=()
# The C++ ops as an in-place (AOT) module, built once per source state into $work/aot and copied into every scratch
# copy: the JIT build's cache is keyed by its include path, so each scratch folder would recompile the kernels.
aot_so=
if [ -z "${MUTATION_SUMMARY_ONLY:-}" ]; then
  aot_dir=$work/aot
  stamp=$(git ls-files -s csrc setup.py | sha1sum | cut -c1-16)
  if [ ! -f "$aot_dir/$stamp.built" ]; then
    rm -rf "$aot_dir"
    mkdir -p "$aot_dir"
    git ls-files -z | tar --null -T - -cf - | tar -C "$aot_dir" -xf -
    echo "== building the C++ ops once (AOT) in $aot_dir"
    (cd "$aot_dir" && CULNIG_AOT=1 "$python" setup.py build_ext --inplace > build.log 2>&1) ||
      { tail -c 2000 "$aot_dir/build.log"; echo "mutation_check: building the C++ ops failed" >&2; exit 2; }
    touch "$aot_dir/$stamp.built"
  fi
  aot_so=$(ls "$aot_dir"/culnig_ext/_C*.so)
fi
# run_module MODULE DIR PATTERNS...: one mutmut run in a fresh scratch copy
run_module() {
  local m=$1 dir=$2
  shift 2
  rm -rf "$dir"
  mkdir -p "$dir"
  git ls-files -z | tar --null -T - -cf - | tar -C "$dir" -xf -
  cp "$aot_so" "$dir/culnig_ext/"   # the C++ ops, built once (a JIT build would recompile in every scratch copy)
  {
    echo "[mutmut]"
    echo "source_paths = culnig_ext"
    echo "only_mutate ="
    for f in ${files[$m]}; do echo "    culnig_ext/$f"; done
    echo "pytest_add_cli_args_test_selection ="
    for t in ${covering[$m]}; do echo "    $t"; done
    echo "pytest_add_cli_args ="
    echo "    -p"
    echo "    no:cacheprovider"
    for t in "${deselect[@]}"; do echo "    --deselect"; echo "    $t"; done
    echo "do_not_mutate_patterns ="
    echo '    ^\s*raise \w'
    echo '    warnings\.warn\('
    echo '    ^\s*(print|log\.\w+|log_fn)\('
    echo '    \b(bar\.\w+|tqdm)\('
    echo "also_copy ="   # the ops read their error messages (and build) from csrc/
    echo "    csrc"
    echo "process_isolation = forkserver"
    echo "use_git_change_detection = false"
  } > "$dir/setup.cfg"
  (
    cd "$dir"
    # One intra-op thread per worker: the tests' tiny models are faster single-threaded, and workers run side by side.
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONPATH= "$python" -m mutmut run --max-children "$jobs" "$@" \
      > "$dir/mutmut_run.log" 2>&1
  ) || { tail -c 3000 "$dir/mutmut_run.log"; echo "mutation_check: mutmut failed on $m" >&2; exit 2; }
}

for m in "${modules[@]}"; do
  t0=$SECONDS
  dir=$work/$m
  if [ -n "${MUTATION_SUMMARY_ONLY:-}" ]; then
    runs+=("$m=$dir/mutants")
    [ -d "$dir.rerun/mutants" ] && runs+=("$m=$dir.rerun/mutants")
    continue
  fi
  if [ -n "${MUTATION_RERUN:-}" ]; then
    mapfile -t again < <("$python" scripts/mutation_summary.py --allowlist scripts/mutation_allowlist.txt \
                         --list-survivors "$m=$dir/mutants")
    runs+=("$m=$dir/mutants")
    if [ ${#again[@]} -gt 0 ]; then
      run_module "$m" "$dir.rerun" "${again[@]}"
      runs+=("$m=$dir.rerun/mutants")
    fi
  else
    # the scope's patterns go to mutmut as they are: no glob expansion here (culnig_ext.* would match the
    # culnig_ext.egg-info folder of an installed checkout)
    set -f
    # shellcheck disable=SC2206
    patterns=(${scope[$m]})
    set +f
    run_module "$m" "$dir" "${patterns[@]}"
    rm -rf "$dir.rerun"
    runs+=("$m=$dir/mutants")
  fi
  measure_cpu
  echo "   $m: $((SECONDS - t0)) s wall; $cpu CPU seconds so far (all workers)"
done

# module_of MUTANT: the module key that ran the mutant: a hand-written key whose scope matches its name, else the
# stage key whose files hold its module (a stage's scope, culnig_ext.*, matches every name)
module_of() {
  local key pat mod file
  for key in "${!scope[@]}"; do
    [[ $key == stage.* ]] && continue
    for pat in ${scope[$key]}; do
      # shellcheck disable=SC2053  # the pattern is a glob on purpose
      [[ $1 == $pat ]] && { echo "$key"; return; }
    done
  done
  mod=${1%%.x[_ǁ]*}; mod=${mod#culnig_ext.}; file=${mod//./\/}.py
  for key in "${!files[@]}"; do
    [[ $key == stage.* && " ${files[$key]} " == *" $file "* ]] && { echo "$key"; return; }
  done
  echo "unknown"
}

rc=0
measure_cpu
"$python" scripts/mutation_summary.py --allowlist scripts/mutation_allowlist.txt --min-rate "${MUTATION_MIN_RATE:-90}" \
  --max-equivalent-share "${MUTATION_MAX_EQUIVALENT:-10}" \
  --seconds $((SECONDS - start)) --cpu-seconds "$cpu" --survivors-out "$work/survivors.txt" "${runs[@]}" || rc=$?
if [ -s "$work/survivors.txt" ] && [ -z "${MUTATION_QUIET:-}" ]; then
  echo; echo "== the surviving mutants' diffs"
  while read -r name; do
    m=$(module_of "$name")
    d=$work/$m; [ -d "$d.rerun/mutants" ] && d=$d.rerun
    (cd "$d" && "$python" -m mutmut show "$name" 2>/dev/null) || echo "$name"
  done < "$work/survivors.txt"
fi
exit $rc
