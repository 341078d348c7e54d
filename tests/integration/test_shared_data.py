"""The reference-data marker: tests that read ../shared/data skip with a reason where it is absent and refuse to
skip where CI requires it (``CULNIG_REQUIRE_SHARED_DATA=1``); checked in subprocesses with the data folder
pointed elsewhere."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import tests.shared_data as s
print(s.PRESENT, s.needs_shared_data.kwargs["reason"])
"""


def run_probe(tmp_path: Path, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    # a copy of tests/ in a folder with no ../shared beside it: the layout of a user's clone
    clone = tmp_path / "clone"
    (clone / "tests").mkdir(parents=True)
    for name in ("__init__.py", "shared_data.py"):
        (clone / "tests" / name).write_bytes((REPO / "tests" / name).read_bytes())
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(clone), **env_extra}
    return subprocess.run([sys.executable, "-c", PROBE], cwd=clone, env=env, capture_output=True, text=True)


def test_absent_data_skips_with_its_path(tmp_path):
    proc = run_probe(tmp_path, {})
    assert proc.returncode == 0, proc.stderr
    present, reason = proc.stdout.strip().split(" ", 1)
    assert present == "False"
    assert reason.startswith(f"needs the reference data at {tmp_path / 'shared' / 'data'}")


def test_absent_data_fails_where_it_is_required(tmp_path):
    proc = run_probe(tmp_path, {"CULNIG_REQUIRE_SHARED_DATA": "1"})
    assert proc.returncode != 0
    assert "CULNIG_REQUIRE_SHARED_DATA=1 but the reference data is not at" in proc.stderr


def test_this_checkout_sees_the_data_when_it_is_there():
    from tests import shared_data

    assert shared_data.PRESENT == ((REPO.parent / "shared" / "data" / "blend").is_dir()
                                   and (REPO.parent / "shared" / "data" / "countryrc").is_dir())
