"""Fast checks (no compiler run) of how a build is configured: the JIT cache key, the CUDA architecture default,
ninja discovery, stale build locks (culnig_ext/kernels/loader.py), and setup.py's choice between the pure wheel and the
ahead-of-time build, which must not import torch unless asked to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from culnig_ext.kernels import loader as _build

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_build_env(monkeypatch):
    for name in ("TORCH_CUDA_ARCH_LIST", "CULNIG_PORTABLE_BUILD", "CULNIG_NO_CUDA", "TORCH_EXTENSIONS_DIR"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_build_key_names_torch_cuda_python_and_cpu(no_build_env):
    no_build_env.setattr(_build, "source_hash", lambda root, with_cuda: "0123456789")
    no_build_env.setattr(torch, "__version__", "2.13.0+cpu")
    no_build_env.setattr(torch.version, "cuda", None)
    no_build_env.setattr(torch.version, "hip", None)
    no_build_env.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert _build.build_key(with_cuda=False) == f"culnig_t2_13_0_cpu_{py}_avx512_src0123456789"

    # Another torch, another CPU, a portable build: each gets a folder of its own.
    no_build_env.setattr(torch, "__version__", "2.14.1+cpu")
    assert _build.build_key(with_cuda=False) == f"culnig_t2_14_1_cpu_{py}_avx512_src0123456789"
    no_build_env.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert _build.build_key(with_cuda=False) == f"culnig_t2_14_1_cpu_{py}_avx2_src0123456789"
    no_build_env.setenv("CULNIG_PORTABLE_BUILD", "1")
    assert _build.build_key(with_cuda=False) == f"culnig_t2_14_1_cpu_{py}_portable_src0123456789"


def test_build_key_of_a_cuda_torch_names_its_gpu_architectures(no_build_env):
    no_build_env.setattr(_build, "source_hash", lambda root, with_cuda: "abcdef0123")
    no_build_env.setattr(torch, "__version__", "2.14.1+cu130")
    no_build_env.setattr(torch.version, "cuda", "13.0")
    no_build_env.setattr(torch.version, "hip", None)
    no_build_env.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    no_build_env.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert _build.build_key(with_cuda=True) == f"culnig_t2_14_1_cu130_{py}_avx2_srcabcdef0123_sm80_90ptx"
    # CPU kernels only (no nvcc) under a CUDA torch: not the same library as the CPU+CUDA one.
    assert _build.build_key(with_cuda=False) == f"culnig_t2_14_1_cu130_{py}_avx2_srcabcdef0123_nocuda"
    assert _build.build_key(with_cuda=True).isidentifier()  # it is also the library's name


def test_cuda_arch_list_prefers_the_environment(no_build_env):
    no_build_env.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert _build.cuda_arch_list() == "9.0"


def test_cuda_arch_list_without_gpu_is_the_documented_default(no_build_env):
    no_build_env.setattr(torch.cuda, "is_available", lambda: False)
    no_build_env.setattr(_build, "_nvcc_archs", lambda: {"7.5", "8.0", "8.6", "9.0", "10.0", "12.0"})
    assert _build.cuda_arch_list() == "8.0;9.0;10.0"
    # An older nvcc that does not know Blackwell: the architectures it cannot compile are left out.
    no_build_env.setattr(_build, "_nvcc_archs", lambda: {"7.0", "7.5", "8.0", "8.6", "9.0"})
    assert _build.cuda_arch_list() == "8.0;9.0"
    # nvcc that cannot list its architectures: the whole default list.
    no_build_env.setattr(_build, "_nvcc_archs", lambda: None)
    assert _build.cuda_arch_list() == "8.0;9.0;10.0"
    no_build_env.setattr(_build, "_nvcc_archs", lambda: {"5.0", "6.0"})
    with pytest.raises(RuntimeError, match="TORCH_CUDA_ARCH_LIST"):
        _build.cuda_arch_list()


def test_cuda_arch_list_with_gpus_is_theirs(no_build_env):
    no_build_env.setattr(torch.cuda, "is_available", lambda: True)
    no_build_env.setattr(torch.cuda, "device_count", lambda: 3)
    caps = {0: (9, 0), 1: (8, 0), 2: (9, 0)}
    no_build_env.setattr(torch.cuda, "get_device_capability", lambda i: caps[i])
    assert _build.cuda_arch_list() == "8.0;9.0"


@pytest.mark.skipif(not Path("/usr/local/cuda/bin/nvcc").is_file(), reason="needs nvcc in /usr/local/cuda")
def test_nvcc_archs_reads_the_real_nvcc(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local/cuda")
    archs = _build._nvcc_archs()
    assert archs is not None and "9.0" in archs and all(a.count(".") == 1 for a in archs)


def test_ninja_of_the_pip_package_is_found_outside_path(monkeypatch, tmp_path):
    ninja = pytest.importorskip("ninja")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no ninja on PATH
    found = shutil.which("ninja", path=_build._ninja_path())
    assert found is not None and Path(found).parent == Path(ninja.BIN_DIR)
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(ninja.BIN_DIR)), "/usr/bin"]))
    assert _build._ninja_path() == os.environ["PATH"]  # already there: PATH unchanged


def test_a_live_build_is_waited_for_and_a_dead_ones_lock_removed(tmp_path, capsys, monkeypatch):
    lock = tmp_path / "lock"
    lock.write_text("")
    sleeps = []

    def other_build_finishes(seconds):  # the other process releases its lock while we wait
        sleeps.append(seconds)
        lock.unlink()

    monkeypatch.setattr(_build.time, "sleep", other_build_finishes)
    _build._wait_for_other_build(tmp_path)
    assert len(sleeps) == 1 and "waiting for another process" in capsys.readouterr().err

    lock.write_text("")
    old = time.time() - _build.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    with pytest.warns(RuntimeWarning, match="removing the build lock"):
        _build._wait_for_other_build(tmp_path)
    assert not lock.exists() and len(sleeps) == 1  # removed at once, no waiting
    _build._wait_for_other_build(tmp_path)  # no lock: returns at once


def test_cache_root_is_torch_extensions_dir_or_torchs_default(no_build_env, tmp_path):
    no_build_env.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert _build.cache_root() == tmp_path
    no_build_env.delenv("TORCH_EXTENSIONS_DIR")
    no_build_env.setattr(torch.version, "cuda", None)
    no_build_env.setattr(torch.version, "hip", None)
    from torch.utils import cpp_extension

    # torch's own folder for an extension of this name must be inside ours.
    no_build_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    torch_dir = Path(cpp_extension._get_build_directory("culnig_probe", False))
    assert torch_dir.parent == _build.cache_root()


# setup.py's mode, seen from a pip-like run of it: which extensions it declares and whether torch got imported.
SETUP_PROBE = r"""
import runpy, sys
import setuptools
declared = []
setuptools.setup = lambda **kw: declared.append(len(kw.get("ext_modules") or []))
sys.argv = ["setup.py"] + sys.argv[1:]
runpy.run_path("setup.py", run_name="__main__")
print(declared[0], "torch" in sys.modules)
"""


def _setup_probe(args: list[str], env_extra: dict, block_torch: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CULNIG_")} | env_extra
    code = ("import sys; sys.modules['torch'] = None\n" if block_torch else "") + SETUP_PROBE
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


def test_setup_py_default_is_a_pure_build_without_torch():
    proc = _setup_probe(["bdist_wheel"], {})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "False"]  # no extension, torch never imported
    proc = _setup_probe(["bdist_wheel"], {"CULNIG_AOT": "0"})
    assert proc.stdout.split() == ["0", "False"]


def test_setup_py_aot_on_request_declares_the_extension():
    for args, env in ((["bdist_wheel"], {"CULNIG_AOT": "1", "CULNIG_NO_CUDA": "1"}),
                      (["build_ext", "--inplace"], {"CULNIG_NO_CUDA": "1"})):
        proc = _setup_probe(args, env)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == ["1", "True"], (args, env)
    # CULNIG_AOT=0 wins over a build_ext on the command line.
    proc = _setup_probe(["build_ext"], {"CULNIG_AOT": "0"})
    assert proc.stdout.split() == ["0", "False"]


def test_setup_py_aot_without_torch_says_how_to_install():
    proc = _setup_probe(["bdist_wheel"], {"CULNIG_AOT": "1"}, block_torch=True)
    assert proc.returncode != 0
    assert "CULNIG_AOT=1" in proc.stderr and "--no-build-isolation" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_setup_py_rejects_an_unknown_aot_value():
    proc = _setup_probe(["bdist_wheel"], {"CULNIG_AOT": "yes"})
    assert proc.returncode != 0 and "CULNIG_AOT='yes'" in proc.stderr, proc.stderr
