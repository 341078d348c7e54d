"""Install matrix: what a new user does, in a fresh virtualenv with only torch installed.

1. ``python -m venv``; ``pip install torch==2.13.0`` (the CPU wheel, from local disk through pip's find-links);
2. ``pip install <checkout>`` with pip's default build isolation (the dependencies pinned by requirements.txt as
   constraints, so pip's cache serves them): it must build a pure wheel without downloading another torch;
3. the first op call JIT-builds the CPU kernels into a temporary TORCH_EXTENSIONS_DIR and its results equal a
   reference computed here; a second process (and ``culnig build``) loads the cache without rebuilding;
4. ``pip wheel`` gives a ``py3-none-any`` wheel holding the C++/CUDA sources; the sdist holds csrc/ and builds the
   same pure wheel; an AOT request inside an isolated build fails with a message saying what to do.

Runs in ~3-5 min on 2 cores (most of it the torch install and one compilation); the venv is deleted afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import torch

from culnig_ext.kernels.loader import BUILD_MESSAGE

REPO = Path(__file__).resolve().parents[2]
TORCH_PIN = "torch==2.13.0"  # as requirements.txt: the CPU wheel on local disk
pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    """The caller's environment less anything that would make the fresh venv see this checkout or skip
    build isolation (PYTHONPATH, CULNIG_*, an active virtualenv, PIP_NO_BUILD_ISOLATION)."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "TORCH_EXTENSIONS_DIR", "PIP_NO_BUILD_ISOLATION")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("CULNIG_")}
    env.update(extra)
    return env


def _run(args: list, cwd: Path, **env_extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(**env_extra), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, f"{args} failed:\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def _copy_checkout(dest: Path) -> None:
    """The files of the checkout as a clone would have them (tracked + untracked-but-not-ignored): no .venv,
    build/, in-place _C*.so or caches."""
    if (REPO / ".git").exists() and shutil.which("git"):
        listing = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, check=True,
                                 capture_output=True).stdout.decode()
        for name in filter(None, listing.split("\0")):
            if (REPO / name).is_file():  # (a tracked file deleted in the work tree is skipped)
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / name, dest / name)
    else:
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "*.egg-info", "_C*.so", "__pycache__", ".pytest_cache"))


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    """A new virtualenv with torch, then culnig_ext pip-installed from a copy of the checkout; yields
    (venv python, checkout copy, work folder, seconds per step). The venv (~1 GB) is deleted afterwards."""
    work = tmp_path_factory.mktemp("install")
    src, venv = work / "checkout", work / "venv"
    _copy_checkout(src)
    seconds = {}
    start = time.perf_counter()
    _run([sys.executable, "-m", "venv", venv], work)
    python = venv / "bin" / "python"
    # --no-compile: no .pyc for torch's thousands of modules (a third of the install time; Python makes the few
    # it imports on the fly).
    _run([python, "-m", "pip", "install", "-q", "--no-compile", TORCH_PIN], work)
    seconds["venv + torch"] = time.perf_counter() - start
    start = time.perf_counter()
    _run([python, "-m", "pip", "install", "-q", "--no-compile", "-c", src / "requirements.txt", src], work)
    seconds["pip install <checkout>"] = time.perf_counter() - start
    yield python, src, work, seconds
    shutil.rmtree(venv, ignore_errors=True)


# Runs both ops of the installed package on the inputs in argv[1], saves the outputs to argv[2], prints how the
# kernels were obtained and where the package and torch came from.
PROBE = r"""
import json, sys, torch
import culnig_ext, culnig_ext.kernels.ops as ops
x = torch.load(sys.argv[1])
out = {}
for name in ("f32", "bf16"):
    act, grad = x[name + "_act"], x[name + "_grad"]
    out[name + "_max"] = ops.max_attribution(act, grad, x["mask"])
    acc = torch.zeros(2, act.shape[2], dtype=torch.float64)
    ops.max_attribution_accumulate_(acc, act, grad, x["mask"], x["weight"], x["group"], clamp_min=0.0)
    out[name + "_acc"] = acc
torch.save(out, sys.argv[2])
print(json.dumps({"kind": ops.LOAD.kind, "detail": ops.LOAD.detail, "backend": ops.backend("cpu"),
                  "package": culnig_ext.__file__, "torch": torch.__file__}))
"""


def _inputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(16)
    act = torch.randn(4, 11, 29, generator=gen)
    grad = torch.randn(4, 11, 29, generator=gen)
    mask = torch.rand(4, 11, generator=gen) > 0.3
    mask[:, 0] = False  # left padding
    mask[:, -1] = True
    return {"f32_act": act, "f32_grad": grad, "bf16_act": act.bfloat16(), "bf16_grad": grad.bfloat16(),
            "mask": mask, "weight": torch.tensor([0.25, 1.5, 2.0, 0.75]), "group": torch.tensor([1, 0, 1, 1])}


def _reference(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Written here in float64: per sample and neuron the max over unmasked tokens of act * grad; the op forms the
    product in float32, which for float32 / bfloat16 inputs is the float64 product rounded once, so the max
    equals the float64 max rounded to float32. The accumulation: acc[g] += w * max(0, that max)."""
    ref = {}
    for name in ("f32", "bf16"):
        prod = x[name + "_act"].double() * x[name + "_grad"].double()
        top = prod.masked_fill(~x["mask"][:, :, None], float("-inf")).amax(1)
        ref[name + "_max"] = top.float()
        acc = torch.zeros(2, top.shape[1], dtype=torch.float64)
        for b in range(top.shape[0]):
            acc[x["group"][b]] += x["weight"][b].double() * top[b].float().double().clamp_min(0.0)
        ref[name + "_acc"] = acc
    return ref


def _probe(python: Path, work: Path, ext_dir: Path, tag: str) -> tuple[dict, dict, str]:
    inputs, outputs = work / "inputs.pt", work / f"outputs_{tag}.pt"
    if not inputs.exists():
        torch.save(_inputs(), inputs)
    proc = _run([python, "-c", PROBE, inputs, outputs], work, TORCH_EXTENSIONS_DIR=str(ext_dir))
    return json.loads(proc.stdout.strip().splitlines()[-1]), torch.load(outputs), proc.stderr


def _build_outputs(build_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(build_dir)): p.stat().st_mtime_ns for p in build_dir.rglob("*")
            if p.suffix in (".o", ".so")}


def test_fresh_venv_install_builds_on_first_use_then_loads_the_cache(fresh_venv):
    python, _, work, seconds = fresh_venv
    ext_dir = work / "torch_extensions"
    site = python.parent.parent / "lib"
    start = time.perf_counter()
    info, got, err = _probe(python, work, ext_dir, "first")
    seconds["first op call (JIT build)"] = time.perf_counter() - start
    # The installed package and the venv's torch, not this checkout or the test's torch.
    assert site in Path(info["package"]).parents and site in Path(info["torch"]).parents, info
    assert info["kind"] == "jit" and info["backend"] == "cpu-ext", info
    library = Path(info["detail"])
    assert library.is_file() and library.parent.parent == ext_dir
    assert err.count(BUILD_MESSAGE) == 1, err
    expected = _reference(_inputs())
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        if name.endswith("_max"):
            assert torch.equal(got[name], want), name
        else:
            torch.testing.assert_close(got[name], want, rtol=1e-12, atol=0, msg=name)
    built = _build_outputs(library.parent)
    assert any(name.endswith(".o") for name in built), built

    start = time.perf_counter()
    info2, got2, err2 = _probe(python, work, ext_dir, "second")
    seconds["second process (cache)"] = time.perf_counter() - start
    assert info2 == info and BUILD_MESSAGE not in err2, err2
    assert all(torch.equal(got2[name], got[name]) for name in got)
    assert _build_outputs(library.parent) == built  # nothing recompiled or relinked

    # The console script a Dockerfile would run finds the same build.
    proc = _run([python.parent / "culnig", "build"], work, TORCH_EXTENSIONS_DIR=str(ext_dir))
    assert f"culnig kernels ready (jit): {library}" in proc.stdout, proc.stdout
    assert BUILD_MESSAGE not in proc.stderr
    assert _build_outputs(library.parent) == built
    print("install matrix timings (s):", json.dumps({k: round(v, 1) for k, v in seconds.items()}))


def _wheel_names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def _assert_pure_wheel_with_sources(dist: Path) -> None:
    wheels = sorted(dist.glob("*.whl"))
    assert [w.name for w in wheels] == ["culnig_ext-0.1.0-py3-none-any.whl"], wheels
    names = _wheel_names(wheels[0])
    for source in ("culnig.cpp", "attribution.h", "cpu/attribution_cpu.cpp", "cuda/attribution_cuda.cu"):
        assert f"culnig_ext/csrc/{source}" in names, names
    assert "culnig_ext/kernels/loader.py" in names and "culnig_ext/kernels/build.py" in names
    for asset in ("explorer.js", "explorer.css", "explorer.html", "neuronpedia.schema.json"):  # report.html's parts
        assert f"culnig_ext/reporting/assets/{asset}" in names, names
    assert not [n for n in names if n.endswith((".so", ".o", ".pyd"))], names
    with zipfile.ZipFile(wheels[0]) as zf:
        assert "Root-Is-Purelib: true" in zf.read("culnig_ext-0.1.0.dist-info/WHEEL").decode()


def test_pip_wheel_is_pure_and_ships_the_sources(fresh_venv):
    python, src, work, _ = fresh_venv
    dist = work / "dist_checkout"
    _run([python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, src], work)
    _assert_pure_wheel_with_sources(dist)


def test_sdist_holds_csrc_and_builds_the_same_pure_wheel(fresh_venv, tmp_path):
    python, src, work, _ = fresh_venv
    sdist_dir = tmp_path / "sdist"
    # The PEP 517 hook that `python -m build --sdist` calls, run by this interpreter's setuptools (>= 77).
    _run([sys.executable, "-c", "import sys, setuptools.build_meta as b; b.build_sdist(sys.argv[1])", sdist_dir],
         src)
    (sdist,) = sdist_dir.glob("culnig_ext-0.1.0.tar.gz")
    with tarfile.open(sdist) as tf:
        names = tf.getnames()
    for source in ("culnig.cpp", "attribution.h", "cpu/attribution_cpu.cpp", "cuda/attribution_cuda.cu"):
        assert f"culnig_ext-0.1.0/csrc/{source}" in names, names
    assert not [n for n in names if n.endswith((".so", ".o"))], names
    dist = tmp_path / "dist_sdist"
    _run([python, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, sdist], work)
    _assert_pure_wheel_with_sources(dist)


def test_aot_request_inside_an_isolated_build_says_what_to_do(fresh_venv, tmp_path):
    python, src, work, _ = fresh_venv
    proc = subprocess.run([str(python), "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(src)],
                          cwd=work, env=_env(CULNIG_AOT="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "CULNIG_AOT=1 pip install --no-build-isolation" in output, output
    assert not list(tmp_path.glob("*.whl"))
