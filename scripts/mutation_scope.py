"""The mutation check's scope over the whole package: every module of ``culnig_ext`` and the tests that cover it.

``scripts/mutation_check.sh --all`` reads this script's output: one mutmut run per stage folder, one line each::

    STAGE<TAB>FILE FILE ...<TAB>TEST TEST ...

and a last line ``--deselect<TAB>NODE NODE ...``: single tests to leave out (``DESELECT``).

STAGE is the stage's folder below ``culnig_ext`` (``data``; ``core`` for the files at the top), FILEs its modules'
paths below ``culnig_ext/``. One run per stage, not per module: mutmut first runs the selected tests once to see
which test reaches which function (its "stats" phase), then runs only those tests per mutant, so a stage's files
share that one pass; the summary still prints one row per file. The covering tests of a module are found, not
listed by hand, so a new module is in scope the day it lands:

- the stage's mirrored test folder, ``tests/<stage>/`` (the layout's rule: tests mirror the package);
- every other test file that imports the module by name (``from culnig_ext.data.frames import``, ``from
  culnig_ext.data import frames``, ``culnig_ext.data.frames``);
- minus the slow integration tests listed in ``SLOW`` (each with its reason), which mutmut would run once per
  mutant.

Left out (``SKIP``): the modules covered by the hand-written keys of ``mutation_check.sh`` (``table``, ``select``,
...; their covering sets were tuned by hand), and modules with no function for mutmut to mutate. A module that no
test covers is printed with an empty test list: mutation_check.sh reports it as uncovered (a failure), never
silently drops it.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "culnig_ext"

#: Files already in a hand-written key of mutation_check.sh (whole-file scopes only).
HAND_WRITTEN = {
    "scoring/table.py", "selection/culnig.py", "scoring/scorer.py", "intervention/inhibit.py", "stats/bootstrap.py",
    "reporting/analysis.py", "stats/recovery.py", "stats/verdict.py", "selection/lape.py",
}

#: Test files never used as covering tests, with the reason.
SLOW = {
    "tests/integration/test_install.py": "builds and pip-installs the wheel in a fresh venv (minutes per mutant)",
    "tests/integration/test_gpu_check.py": "runs scripts/gpu_check.sh --smoke in a subprocess (a minute per mutant)",
    "tests/integration/test_plant_validate.py": "plants and validates end to end on the embedded model",
    "tests/kernels/test_build.py": "compiles the C++ ops (a JIT build per mutant)",
    "tests/kernels/test_ops_cuda.py": "CUDA only: skips on these machines",
    # Tests that run culnig_ext in a child Python: the child imports the mutated package outside mutmut's run
    # (its trampolines then fail on every call), so they cannot see a mutant; their modules have in-process tests.
    "tests/cli/test_fast_answers.py": "runs culnig in a subprocess (checks what it imports)",
    "tests/cli/test_interrupt.py": "runs culnig in a subprocess and signals it",
    "tests/scoring/test_distributed.py": "runs torchrun workers in subprocesses",
    "tests/scoring/test_resume.py": "kills a culnig subprocess mid-run",
    "tests/integration/test_public_api.py": "imports the package in a subprocess",
    "tests/integration/test_shared_data.py": "probes a clone in a subprocess",
    "tests/kernels/test_build_config.py": "runs setup.py probes in subprocesses",
}

#: Single tests left out the same way (pytest --deselect), where the rest of their file runs in process.
DESELECT = [
    "tests/kernels/test_ops.py::test_cpu_capability_choice_and_override",  # a child Python per CPU capability
]


def has_function(path: Path) -> bool:
    """Whether the file defines a function or method (mutmut mutates nothing else)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(tree))


def import_patterns(rel: str) -> list[re.Pattern]:
    """Regexes that find an import of the module ``rel`` (``data/frames.py``) in a test file."""
    dotted = "culnig_ext." + rel[:-3].replace("/", ".")
    parent, _, name = dotted.rpartition(".")
    return [re.compile(rf"\b{re.escape(dotted)}\b"),
            re.compile(rf"from\s+{re.escape(parent)}\s+import\s+(\([^)]*\b{name}\b|[^\n]*\b{name}\b)")]


def covering_tests(rel: str, tests: dict[str, str]) -> list[str]:
    """The test files that cover the module ``rel``: the mirrored ones and those importing it, minus ``SLOW``."""
    stage, _, file = rel.rpartition("/")
    stem = file[:-3]
    mirror = re.compile(rf"^tests/{re.escape(stage)}/test_{re.escape(stem)}(_\w+)?\.py$") if stage else None
    pats = import_patterns(rel)
    out = []
    for path, text in tests.items():
        if path in SLOW:
            continue
        if (mirror is not None and mirror.match(path)) or any(p.search(text) for p in pats):
            out.append(path)
    return sorted(out)


def scope() -> dict[str, tuple[list[str], list[str]]]:
    """Stage -> (its files in scope, the union of their covering tests), stages and files in path order."""
    tests = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8")
             for p in sorted((ROOT / "tests").rglob("test_*.py"))}
    out: dict[str, tuple[list[str], list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        if rel in HAND_WRITTEN or not has_function(path):
            continue
        stage = rel.split("/")[0] if "/" in rel else "core"
        files, covering = out.setdefault(stage, ([], []))
        files.append(rel)
        mirrored = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / stage).glob("test_*.py"))
        covering.extend(t for t in mirrored if t not in covering and t not in SLOW)
        covering.extend(t for t in covering_tests(rel, tests) if t not in covering)
    return out


def main(argv: list[str]) -> int:
    for stage, (files, tests) in scope().items():
        print(f"{stage}\t{' '.join(files)}\t{' '.join(sorted(tests))}")
    print(f"--deselect\t{' '.join(DESELECT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
