"""Summarise a mutmut run (``scripts/mutation_check.sh``): kill rate per module and the surviving mutants.

Reads mutmut's result files (``mutants/<path>.meta``, JSON with ``exit_code_by_key``) and the allow-list
(``mutant-name  # reason`` per line: equivalent mutants, which no test can kill). A mutant counts as killed when
a test failed, timed out or crashed on it; as surviving when the tests passed or no test covers it. Mutants the
run did not select (``exit code None``) are out of scope. Exit status 1 when a module's raw kill rate (equivalent
mutants counted as survivors) is below ``--min-rate``, its allow-listed share is above ``--max-equivalent-share``,
or a survivor is not allow-listed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KILLED = {1, 3, 36, 24, -24, 152, 255, -11, -9}  # test failed, pytest internal error, timeout, crash
SURVIVED = {0, 5, 33}  # tests passed; no test ran
SKIPPED = {34}


def read_allowlist(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, reason = line.partition("#")
        name, reason = name.strip(), reason.strip()
        if not sep or not reason or " " in name:
            raise SystemExit(f"{path}:{number}: expected 'mutant-name  # reason', got {line!r}")
        out[name] = reason
    return out


def module_path(mutant: str) -> str:
    """``culnig_ext.stats.power.x_mde__mutmut_3`` (or a method's ``...xǁClassǁname__mutmut_3``) -> its module's
    dotted path, ``culnig_ext.stats.power``."""
    for marker in (".x_", ".xǁ"):
        if marker in mutant:
            return mutant.split(marker, 1)[0]
    return mutant.rsplit(".", 1)[0]


def stale_entries(allow: dict[str, str], codes_by_module: dict[str, dict]) -> list[str]:
    """Allow-list entries of a module this run mutated that name none of its mutants (numbers shift when the code
    changes, so an entry can come to excuse a different mutant, or none)."""
    seen = {k for codes in codes_by_module.values() for k in codes}
    modules = {module_path(k) for k in seen}
    return sorted(k for k in allow if module_path(k) in modules and k not in seen)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="MODULE=DIR: a module's name and its run's mutants/ folder; a module may "
                   "come several times (a re-run of survivors): later results override earlier ones")
    p.add_argument("--list-survivors", action="store_true", help="only print the unlisted survivors' names")
    p.add_argument("--allowlist", type=Path, required=True)
    p.add_argument("--min-rate", type=float, default=90.0)
    p.add_argument("--max-equivalent-share", type=float, default=None,
                   help="fail a row whose allow-listed (equivalent) mutants exceed this %% of its mutants")
    p.add_argument("--seconds", type=int, default=None, help="wall time of the run, printed")
    p.add_argument("--cpu-seconds", type=int, default=None, help="CPU time of the run (all workers), printed")
    p.add_argument("--survivors-out", type=Path, default=None, help="write unlisted survivors' names here")
    args = p.parse_args(argv)

    allow = read_allowlist(args.allowlist)
    ok = True
    unlisted: list[str] = []
    rows = []
    codes_by_module: dict[str, dict] = {}
    for run in args.runs:
        module, _, folder = run.partition("=")
        # every result file of the run: a module's mutants sit in culnig_ext/<stage>/<file>.py.meta (one file per
        # mutated source file; the pipeline key mutates several)
        metas = sorted((Path(folder) / "culnig_ext").rglob("*.py.meta"))
        if not metas:
            raise SystemExit(f"{module}: no results (no *.py.meta under {Path(folder) / 'culnig_ext'})")
        for meta in metas:
            # a whole stage's run (key "stage.<folder>", scripts/mutation_scope.py) gets one row per source file
            row = (str(meta.relative_to(Path(folder) / "culnig_ext"))[: -len(".meta")]
                   if module.startswith("stage.") else module)
            merged = codes_by_module.setdefault(row, {})
            for key, code in json.loads(meta.read_text())["exit_code_by_key"].items():
                if code is not None or key not in merged:
                    merged[key] = code
    if args.list_survivors:
        for codes in codes_by_module.values():
            for k, c in sorted(codes.items()):
                if c is not None and c not in SKIPPED and c not in KILLED and k not in allow:
                    print(k)
        return 0
    for module, codes in codes_by_module.items():
        checked = {k: c for k, c in codes.items() if c is not None and c not in SKIPPED}
        killed = sorted(k for k, c in checked.items() if c in KILLED)
        survived = sorted(k for k, c in checked.items() if c not in KILLED)
        other = sorted(k for k in survived if checked[k] not in SURVIVED)
        equivalent = [k for k in survived if k in allow]
        real = [k for k in survived if k not in allow]
        unlisted += real
        total = len(checked)
        raw = 100.0 * len(killed) / total if total else 0.0
        scored = total - len(equivalent)
        rate = 100.0 * len(killed) / scored if scored else 100.0
        share = 100.0 * len(equivalent) / total if total else 0.0
        too_many = args.max_equivalent_share is not None and share > args.max_equivalent_share
        if too_many:
            print(f"note: {module}: {len(equivalent)} of {total} mutants allow-listed ({share:.1f}% > "
                  f"{args.max_equivalent_share:g}%)")
        ok &= raw >= args.min_rate and not real and not too_many
        rows.append((module, total, len(killed), len(equivalent), len(real), raw, rate))
        for k in other:
            print(f"note: {k} ended with exit code {checked[k]} (counted as surviving)")
    print()
    print("| module | mutants | killed | equivalent (allow-listed) | surviving | kill rate | kill rate, equivalents left out |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for module, total, killed, eq, real, raw, rate in rows:
        name = module if module.endswith(".py") else module + ".py"
        print(f"| {name} | {total} | {killed} | {eq} | {real} | {raw:.1f}% | {rate:.1f}% |")
    total = sum(r[1] for r in rows)
    killed = sum(r[2] for r in rows)
    eq = sum(r[3] for r in rows)
    print(f"| all | {total} | {killed} | {eq} | {sum(r[4] for r in rows)} | "
          f"{100.0 * killed / max(total, 1):.1f}% | {100.0 * killed / max(total - eq, 1):.1f}% |")
    if args.seconds is not None:
        print(f"\nwall time {args.seconds} s" + ("" if args.cpu_seconds is None else
                                                 f", CPU time {args.cpu_seconds} s (user + system, all workers)"))
    stale = stale_entries(allow, codes_by_module)
    if stale:
        ok = False
        print(f"\n{len(stale)} allow-list entr{'y' if len(stale) == 1 else 'ies'} of these modules name no mutant of "
              f"this run (the code moved: re-check and renumber or remove them):")
        for k in stale:
            print(f"  {k}")
    if unlisted:
        print(f"\n{len(unlisted)} surviving mutant(s) not in {args.allowlist}:")
        for k in unlisted:
            print(f"  {k}")
    if args.survivors_out is not None:
        args.survivors_out.write_text("".join(k + "\n" for k in unlisted))
    print(f"\nmutation check {'passed' if ok else 'FAILED'} (min raw kill rate {args.min_rate:g}% per module"
          + ("" if args.max_equivalent_share is None else f", at most {args.max_equivalent_share:g}% allow-listed")
          + ")")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
