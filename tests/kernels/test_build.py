"""Build tests: the JIT build is cached and reused, the reference can be forced, a missing compiler falls
back with a warning, an AOT install (CULNIG_AOT=1) ships a working module whose results equal the JIT build's,
and ``culnig build`` reports failures and cleans the cache.

Each runs in subprocesses with its own TORCH_EXTENSIONS_DIR, so they neither use nor disturb the
developer's cache. Two compilations (one JIT, one AOT; ~20-60 s each on 2 idle cores), shared by the tests
through module fixtures; marked slow. The fresh-virtualenv install matrix is tests/integration/test_install.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from culnig_ext.kernels.loader import BUILD_MESSAGE

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

# Prints how the extension was obtained and checks one value of the op against plain torch.
PROBE = r"""
import json, torch
import culnig_ext.kernels.ops as ops
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


@pytest.fixture(scope="module")
def jit_build(tmp_path_factory):
    """A first JIT build (from the repository's csrc/) into a fresh extensions folder: (folder, probe result,
    probe stderr, mtimes of the build's objects)."""
    cache = tmp_path_factory.mktemp("torch_extensions")
    result, err = _run_probe({"TORCH_EXTENSIONS_DIR": str(cache), "CULNIG_NO_AOT": "1"})
    return cache, result, err, _build_outputs(Path(result["detail"]).parent)


def test_jit_build_is_cached_and_reused(jit_build):
    cache, first, first_err, built = jit_build
    env = {"TORCH_EXTENSIONS_DIR": str(cache), "CULNIG_NO_AOT": "1"}
    assert first["kind"] == "jit" and first["backend"] == "cpu-ext"
    so = Path(first["detail"])
    assert so.is_file() and cache in so.parents
    assert first_err.count(BUILD_MESSAGE) == 1, first_err
    assert any(name.endswith(".o") for name in built), built

    second, second_err = _run_probe(env)
    assert second == first
    assert BUILD_MESSAGE not in second_err
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


@pytest.fixture(scope="module")
def aot_site(tmp_path_factory):
    """culnig_ext installed ahead of time (CULNIG_AOT=1 pip install --no-build-isolation --target SITE) from a
    copy of the sources (never the repo's own in-place build products)."""
    tmp_path = tmp_path_factory.mktemp("aot")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "csrc"):
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
    env.update(CULNIG_AOT="1", CULNIG_NO_CUDA="1")
    env.setdefault("MAX_JOBS", "2")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-q",
         "--target", str(site), str(src)],
        env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return site


def test_aot_install_ships_a_working_module(aot_site, tmp_path):
    site = aot_site
    assert list(site.glob("culnig_ext/_C*.so")), sorted(p.name for p in (site / "culnig_ext").iterdir())
    assert (site / "culnig_ext" / "csrc" / "culnig.cpp").is_file()  # sources shipped for a JIT rebuild

    cache = tmp_path / "torch_extensions"
    cache.mkdir()
    result, err = _run_probe({"TORCH_EXTENSIONS_DIR": str(cache)}, cwd=tmp_path, pythonpath=str(site))
    assert result["kind"] == "aot" and result["backend"] == "cpu-ext"
    assert Path(result["module"]).parent == site / "culnig_ext" / "kernels"
    assert list(cache.iterdir()) == []  # the AOT module was used: no JIT build
    assert BUILD_MESSAGE not in err


# Runs both ops on seeded inputs (every dtype, a strided column slice, a clamp) and saves the outputs.
OUTPUTS = r"""
import sys, torch
import culnig_ext.kernels.ops as ops
assert ops.LOAD.kind == sys.argv[2], ops.LOAD
gen = torch.Generator().manual_seed(7)
out = {}
for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    fused = torch.randn(3, 9, 2 * 37, generator=gen).to(dtype)
    act, grad = fused[..., :37], fused[..., 37:]  # column slices of a fused projection: last-dim stride 1
    mask = torch.rand(3, 9, generator=gen) > 0.4
    mask[:, -1] = True
    out[f"max_{dtype}"] = ops.max_attribution(act, grad, mask)
    acc = torch.zeros(2, 37, dtype=torch.float64)
    ops.max_attribution_accumulate_(acc, act, grad, mask, torch.tensor([0.5, 2.0, -1.0]),
                                    torch.tensor([1, 0, 1]), clamp_min=0.0)
    out[f"acc_{dtype}"] = acc
torch.save(out, sys.argv[1])
"""


def test_aot_and_jit_give_identical_results(aot_site, jit_build, tmp_path):
    cache = jit_build[0]
    results = {}
    for kind, env, pythonpath in (("aot", {}, str(aot_site)), ("jit", {"CULNIG_NO_AOT": "1"}, str(REPO))):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CULNIG_")} | env
        env.update(PYTHONPATH=pythonpath, TORCH_EXTENSIONS_DIR=str(cache))
        out = tmp_path / f"{kind}.pt"
        proc = subprocess.run([sys.executable, "-c", OUTPUTS, str(out), kind], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr
        assert BUILD_MESSAGE not in proc.stderr  # the JIT side reuses the module's build
        results[kind] = torch.load(out)
    assert sorted(results["aot"]) == sorted(results["jit"]) and len(results["aot"]) == 8
    for name, aot in results["aot"].items():
        assert torch.equal(aot, results["jit"][name]), name  # bit for bit
        assert torch.isfinite(aot).all() and aot.abs().sum() > 0, name


def _run_build_cli(args: list[str], env_extra: dict, entry: tuple = ("culnig_ext.kernels.build",)):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CULNIG_")}
    env.update(env_extra, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", *entry, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("entry", [("culnig_ext.kernels.build",), ("culnig_ext.cli.main", "build")],
                         ids=["python -m culnig_ext.kernels.build", "culnig build"])
def test_culnig_build_reports_a_missing_compiler(tmp_path, entry):
    proc = _run_build_cli([], {"TORCH_EXTENSIONS_DIR": str(tmp_path), "CULNIG_NO_AOT": "1",
                               "CXX": str(tmp_path / "no-such-c++")}, entry)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("culnig build: error:")]
    assert len(error) == 1, proc.stderr
    assert "JIT build failed" in error[0] and "Install a C++ compiler" in error[0]
    assert proc.stdout == ""


def test_culnig_build_clean_removes_every_cached_build(tmp_path):
    # Two builds of other setups (another torch, another CPU) and an unrelated extension.
    for name in ("culnig_t2_0_0_cpu_py311_avx2", "culnig_t2_9_1_cu128_py311_avx512_sm90", "other_ext"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.so").write_bytes(b"")
    # The rebuild after cleaning fails fast here (no compiler): the removal is what is checked.
    proc = _run_build_cli(["--clean"], {"TORCH_EXTENSIONS_DIR": str(tmp_path), "CULNIG_NO_AOT": "1",
                                        "CXX": str(tmp_path / "no-such-c++")})
    assert proc.returncode == 1
    assert f"removed 2 cached build(s) from {tmp_path}" in proc.stderr, proc.stderr
    assert not (tmp_path / "culnig_t2_0_0_cpu_py311_avx2").exists()
    assert not (tmp_path / "culnig_t2_9_1_cu128_py311_avx512_sm90").exists()
    assert (tmp_path / "other_ext" / "other_ext.so").is_file()
