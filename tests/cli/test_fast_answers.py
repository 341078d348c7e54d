"""Help, usage errors and the checks that need no model answer before torch or transformers is imported: each runs
``culnig`` in a fresh interpreter that records, at exit, which of their modules it had imported."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import atexit, json, sys
def record():
    heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))
    with open({out!r}, 'w') as f:
        json.dump(heavy, f)
atexit.register(record)
from culnig_ext.cli.main import main
sys.exit(main({argv!r}))
"""


def culnig(argv: list[str], tmp_path: Path) -> tuple[int, str, str, list[str]]:
    """Run ``culnig argv`` in a fresh interpreter: exit status, stdout, stderr, the torch/transformers modules it
    imported."""
    out = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", PROBE.format(out=str(out), argv=argv)], capture_output=True,
                          text=True, cwd=REPO)
    return proc.returncode, proc.stdout, proc.stderr, json.loads(out.read_text())


@pytest.mark.parametrize("argv", [["--help"], ["score", "--help"], ["run", "--help"], ["evaluate", "--help"]],
                         ids=" ".join)
def test_help_imports_neither_torch_nor_transformers(argv, tmp_path):
    status, stdout, _, heavy = culnig(argv, tmp_path)
    assert status == 0 and "usage: culnig" in stdout
    assert heavy == []


@pytest.mark.parametrize("argv, status, message", [
    (["score", "--model", "m", "--data", "d", "--out", "o.safetensors", "--no-such-flag"], 2,
     "unrecognized arguments: --no-such-flag"),
    (["score", "--model", "m", "--data", "d"], 2, "the following arguments are required: --out"),
    (["score", "--model", "m", "--data", "d", "--out", "{tmp}/o.safetensors", "--batch-size", "0", "--no-progress"],
     1, "culnig score: error: --batch-size must be a whole number >= 1, got 0"),
    (["score", "--model", "m", "--data", "d", "--out", "{tmp}", "--no-progress"], 1,
     "culnig score: error: --out {tmp}: is a folder"),
    (["run", "--random", "-1", "--out", "{tmp}/run", "--no-progress"], 1,
     "culnig run: error: --random must be a whole number >= 0, got -1"),
    (["run", "--t-mlp", "1.5", "--out", "{tmp}/run"], 1,
     "culnig run: error: --t-mlp must be a fraction in [0, 1], got 1.5"),
    (["run", "--kinship-groups", "0", "--out", "{tmp}/run"], 1,
     "culnig run: error: --kinship-groups must be a whole number >= 1, got 0"),
    (["identify", "general", "--neur", "n.safetensors", "--t-mlp", "2", "--out", "{tmp}/g.json"], 1,
     "culnig identify: error: --t-mlp must be a fraction in [0, 1], got 2.0"),
    (["evaluate", "--model", "m", "--data", "d", "--random", "2", "--out", "{tmp}/e"], 1,
     "culnig evaluate: error: --random needs --inhibit"),
    (["sweep", "--random", "-3", "--out", "{tmp}/s"], 1, "culnig sweep: error: --random must be a whole number >= 0"),
    (["compare", "--top-rate", "0", "--out", "{tmp}/c"], 1, "culnig compare: error: --top-rate must be above 0"),
], ids=lambda x: " ".join(x) if isinstance(x, list) else None)
def test_mistakes_are_answered_before_torch_is_imported(argv, status, message, tmp_path):
    argv = [a.format(tmp=tmp_path) for a in argv]
    got, stdout, stderr, heavy = culnig(argv, tmp_path)
    assert got == status, stderr
    assert message.format(tmp=tmp_path) in stderr
    assert heavy == []


def test_a_good_command_does_import_torch(tmp_path):
    """The control: the probe sees torch when a command gets past its option checks (here to the data)."""
    status, _, stderr, heavy = culnig(["score", "--model", "m", "--data", str(tmp_path / "missing.jsonl"), "--out",
                                       str(tmp_path / "o.safetensors"), "--no-progress"], tmp_path)
    assert status == 1 and "missing.jsonl" in stderr
    assert "torch" in heavy


def test_the_option_checks_and_configs_import_no_torch():
    code = ("import sys\n"
            "import culnig_ext.studies.option_checks, culnig_ext.studies.config, culnig_ext.studies.options\n"
            "import culnig_ext.models.embedded, culnig_ext.cli.main\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]\n"
            "assert heavy == [], heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr


def test_the_run_folder_files_agree_with_the_report():
    from culnig_ext.reporting.report import HTML_FILE, REPORT_FILE, RESULTS_FILE
    from culnig_ext.studies.option_checks import RUN_FILES

    assert {RESULTS_FILE, REPORT_FILE, HTML_FILE, "summary.md", "config.json"} == set(RUN_FILES)
