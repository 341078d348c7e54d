"""Build tests: the JIT build is cached and reused, the reference can be forced, a missing compiler falls
back with a warning, and a non-editable install ships a working ahead-of-time module.

Each runs in subprocesses with its own TORCH_EXTENSIONS_DIR, so they neither use nor disturb the
developer's cache. They compile the extension (~20-60 s each on 2 cores) and are marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# Prints how the extension was obtained and checks one value of the op against plain torch.
PROBE = r"""
import json, torch
import culnig_ext.ops as ops
act = torch.arange(12.0).reshape(1, 3, 4); grad = torch.full((1, 3, 4), -1.0)
mask = torch.tensor([[False, True, True]])
out = ops.max_attribution(act, grad, mask)
assert out.tolist() == [[-4.0, -5.0, -6.0, -7.0]], out
print(json.dumps({"kind": ops.LOAD.kind, "detail": ops.LOAD.detail, "backend": ops.backend("cpu"),
                  "module": ops.__file__}))
"""


def _run_probe(env_extra: dict, cwd: Path = REPO, pythonpath: str | None = None) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CULNIG_")}
    env.update(env_extra)
    env["PYTHONPATH"] = pythonpath if pythonpath is not None else str(REPO)
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"probe failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _build_outputs(build_dir: Path) -> dict[str, int]:
    """mtime (ns) of every object file and shared library of a JIT build folder."""
    files = [p for p in build_dir.rglob("*") if p.suffix in (".o", ".so")]
    return {str(p.relative_to(build_dir)): p.stat().st_mtime_ns for p in files}


def test_jit_build_is_cached_and_reused(tmp_path):
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path), "CULNIG_NO_AOT": "1"}
    first, first_err = _run_probe(env)
    assert first["kind"] == "jit" and first["backend"] == "cpu-ext"
    so = Path(first["detail"])
    assert so.is_file() and tmp_path in so.parents
    assert "building the C++ extension" in first_err
    built = _build_outputs(so.parent)
    assert any(name.endswith(".o") for name in built), built

    second, second_err = _run_probe(env)
    assert second == first
    assert "building the C++ extension" not in second_err
    # No rebuild: no object file or library was rewritten.
    assert _build_outputs(so.parent) == built


def test_force_reference_skips_the_extension(tmp_path):
    result, err = _run_probe({"TORCH_EXTENSIONS_DIR": str(tmp_path), "CULNIG_NO_AOT": "1",
                              "CULNIG_FORCE_REFERENCE": "1"})
    assert result["kind"] == "none" and result["backend"] == "reference"
    assert list(tmp_path.iterdir()) == []  # nothing was built
    assert "building" not in err


def test_missing_compiler_falls_back_with_one_warning(tmp_path):
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path), "CULNIG_NO_AOT": "1", "CXX": str(tmp_path / "no-such-c++")}
    result, err = _run_probe(env)
    assert result["kind"] == "none" and result["backend"] == "reference"
    warnings = [line for line in err.splitlines() if "using the slower pure-PyTorch reference" in line]
    assert len(warnings) == 1, err
    assert "JIT build failed" in warnings[0] and "Fix:" in warnings[0]


def test_non_editable_install_ships_a_working_aot_module(tmp_path):
    # Install from a copy of the sources (never the repo's own in-place build products).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "csrc"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, src / name)
    shutil.copytree(REPO / "culnig_ext", src / "culnig_ext",
                    ignore=shutil.ignore_patterns("_C*.so", "__pycache__", "*.pyc"))
    for optional in ("README.md", "LICENSE"):
        if (REPO / optional).is_file():
            shutil.copy(REPO / optional, src / optional)
        elif optional == "README.md":
            (src / optional).write_text("culnig_ext\n")
    site = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CULNIG_")}
    env["CULNIG_NO_CUDA"] = "1"
    env.setdefault("MAX_JOBS", "2")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-q",
         "--target", str(site), str(src)],
        env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert list(site.glob("culnig_ext/_C*.so")), sorted(p.name for p in (site / "culnig_ext").iterdir())
    assert (site / "culnig_ext" / "csrc" / "culnig.cpp").is_file()  # sources shipped for a JIT rebuild

    cache = tmp_path / "torch_extensions"
    cache.mkdir()
    result, _ = _run_probe({"TORCH_EXTENSIONS_DIR": str(cache)}, cwd=tmp_path, pythonpath=str(site))
    assert result["kind"] == "aot" and result["backend"] == "cpu-ext"
    assert Path(result["module"]).parent == site / "culnig_ext"
    assert list(cache.iterdir()) == []  # the AOT module was used: no JIT build
