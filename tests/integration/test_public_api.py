"""The public API: every import line and every ``culnig_ext.X`` name the README and the documentation (docs/*.md)
show works, and the old flat module paths still import (with one FutureWarning) as the module at the new path."""
from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]  # what users are shown
README = "\n".join(page.read_text() for page in PAGES)


def code_lines(text: str) -> list[str]:
    """The lines inside the README's fenced code blocks."""
    inside, out = False, []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif inside:
            out.append(line)
    return out


CODE = "\n".join(code_lines(README))

# Read from the README and the docs themselves, so the test follows what users are shown.
IMPORT_LINES = sorted(set(re.findall(r"^\s*(from culnig_ext[\w.]* import [\w, ]+|import culnig_ext[\w.]*)\s*(?:#.*)?$",
                                     CODE, flags=re.M)))
# culnig_ext._C is the ahead-of-time module, present only when an AOT build was asked for (the README says so).
DOTTED = sorted(set(re.findall(r"`(culnig_ext(?:\.\w+)+)", README)) - {"culnig_ext._C"})

# The modules of the flat layout (git history before the move), hand-listed: each must still import.
OLD_MODULES = [
    "analysis", "atomic", "batching", "build", "checkpoint", "checkpointing", "cloze_cache", "compare",
    "distributed", "finetune", "finetune_report", "finetune_study", "frames", "gguf_header", "interrupt", "items",
    "lape", "lmeval", "logs", "model_inputs", "modules", "moe", "neurons", "ops", "ops_reference", "options",
    "overlap", "pipeline", "power", "preflight", "provenance", "report", "saq_eval", "scorer", "select", "sites",
    "stability", "streaming", "sweep", "table", "textfile", "verdict", "wrapped", "_build",
]


def test_the_readme_shows_imports():
    assert len(IMPORT_LINES) >= 5 and any("load_model" in line for line in IMPORT_LINES)
    readme = "\n".join(code_lines((REPO / "README.md").read_text()))
    assert "from culnig_ext.models import load_model" in readme  # the README's own example is among them


@pytest.mark.parametrize("line", IMPORT_LINES)
def test_every_import_line_of_the_readme_works(line):
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the README shows new paths only
        exec(line, namespace)
    names = [n.strip() for n in line.split(" import ", 1)[1].split(",")] if " import " in line else []
    for name in names:
        assert namespace[name] is not None


@pytest.mark.parametrize("dotted", DOTTED)
def test_every_dotted_name_of_the_readme_resolves(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return
    pytest.fail(f"{dotted} does not resolve")


@pytest.mark.parametrize("name", ["score", "item_scores", "ScoreTable", "NeuronSet", "Neuron", "inhibit",
                                  "evaluate", "EvalResult", "neuron_sites", "Site", "ScoreItem", "load_items",
                                  "load_model", "run_pipeline", "RunConfig", "select", "__version__"])
def test_top_level_names(name):
    import culnig_ext

    assert name in culnig_ext.__all__
    value = getattr(culnig_ext, name)
    if name in ("inhibit", "evaluate", "score", "load_model", "load_items", "run_pipeline"):
        assert callable(value) and not isinstance(value, type(culnig_ext))
    if name == "select":
        assert callable(value.general) and callable(value.specific)


def test_old_module_paths_still_import_with_one_warning_each():
    # One fresh interpreter for all of them: each old path warns once (naming the new one), imports the module at
    # its new path, and a second import neither warns again nor makes another module object.
    code = (
        "import importlib, json, warnings\n"
        "out = {}\n"
        f"for old in {OLD_MODULES!r}:\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        m = importlib.import_module('culnig_ext.' + old)\n"
        "        again = importlib.import_module('culnig_ext.' + old)\n"
        "    moved = [str(x.message) for x in w if issubclass(x.category, FutureWarning)]\n"
        "    out[old] = [m.__name__, m is again, moved]\n"
        "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert sorted(seen) == sorted(OLD_MODULES)
    for old, (name, same, moved) in seen.items():
        assert name.startswith("culnig_ext.") and name != f"culnig_ext.{old}" and same, (old, name)
        assert moved == [f"culnig_ext.{old} has moved to {name}; the old path works for this release only"], old


def test_importing_the_package_stays_light():
    code = ("import sys, culnig_ext\n"
            "assert 'torch' not in sys.modules, 'import culnig_ext imported torch'\n"
            "culnig_ext.ScoreTable\n"
            "assert 'torch' in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
