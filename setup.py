"""Packaging of culnig_ext (metadata lives in pyproject.toml). Two modes:

Default -- a pure ``py3-none-any`` wheel, built without torch (``pip install .``, ``pip install git+URL``, an
sdist, ``pip wheel .``): the Python package plus the C++/CUDA sources, copied from csrc/ into
``culnig_ext/csrc``. The kernels are compiled on first use against the user's torch (JIT, ninja, cached; see
``culnig_ext/kernels/loader.py``) or ahead of first use with ``culnig build``.

Ahead of time (AOT), on request -- ``culnig_ext._C`` compiled now against the torch installed in the build
environment, so no compiler is needed at run time:

    CULNIG_AOT=1 pip install --no-build-isolation .       # (add -e for an editable install)
    python setup.py build_ext --inplace                    # naming build_ext also means AOT

A CUDAExtension (with csrc/cuda/attribution_cuda.cu) is built when torch is a CUDA build and nvcc is found
(CUDA_HOME); its GPU architectures are TORCH_CUDA_ARCH_LIST if set, else those of the GPUs present, else
8.0;9.0;10.0 (those of them the nvcc knows). CULNIG_NO_CUDA=1 forces the CPU-only build. Every build is portable
(no -march): the CPU kernel is compiled for the baseline, AVX2 and AVX-512 and chosen at load time.

Which mode is decided from the environment and the command line alone, before anything imports torch: the
default needs no torch at build time, so pip's isolated build environment never downloads one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def aot_requested(environ=os.environ, argv=sys.argv) -> bool:
    """True for an ahead-of-time build: CULNIG_AOT=1, or CULNIG_AOT unset and build_ext named on the command
    line (``python setup.py build_ext``; pip never names it). CULNIG_AOT=0 forces the pure wheel."""
    flag = environ.get("CULNIG_AOT", "").strip()
    if flag not in ("", "0", "1"):
        raise SystemExit(f"culnig_ext setup.py: CULNIG_AOT={flag!r}; expected 1 (ahead-of-time build) "
                         "or 0 / unset (pure wheel, kernels built on first use)")
    return flag == "1" or (flag == "" and "build_ext" in argv[1:])


def _load_build_module():
    """culnig_ext/kernels/loader.py, loaded by path (without importing the package) for the shared flags."""
    spec = importlib.util.spec_from_file_location("_culnig_build", ROOT / "culnig_ext" / "kernels" / "loader.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _aot_extension():
    """The culnig_ext._C extension and its build_ext command, compiled against the installed torch."""
    try:
        import torch  # noqa: F401  (only the AOT build needs it)
    except ImportError:
        raise SystemExit(
            "culnig_ext setup.py: CULNIG_AOT=1 compiles the kernels against the torch of the build environment, "
            "and it has none. Install torch first, then `CULNIG_AOT=1 pip install --no-build-isolation .` "
            "(or drop CULNIG_AOT for the pure wheel, whose kernels build on first use)") from None
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    flags = _load_build_module()
    # Paths relative to this file, as setuptools wants them.
    sources = [os.path.relpath(p, ROOT) for p in flags.source_files(ROOT / "csrc", with_cuda=False)]
    compile_args = {"cxx": flags.cxx_flags()}
    if flags.cuda_build_possible():
        arch_list = flags.cuda_arch_list()
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list  # read by torch's build_ext
        print(f"culnig_ext: AOT build with CUDA kernels for TORCH_CUDA_ARCH_LIST={arch_list}", file=sys.stderr)
        sources = [os.path.relpath(p, ROOT) for p in flags.source_files(ROOT / "csrc", with_cuda=True)]
        compile_args["nvcc"] = flags.NVCC_FLAGS
        ext = CUDAExtension("culnig_ext._C", sources, include_dirs=[str(ROOT / "csrc")],
                            extra_compile_args=compile_args)
    else:
        print("culnig_ext: AOT build of the CPU kernels (no CUDA kernels: torch is a CPU build, nvcc was not "
              "found, or CULNIG_NO_CUDA=1)", file=sys.stderr)
        ext = CppExtension("culnig_ext._C", sources, include_dirs=[str(ROOT / "csrc")],
                           extra_compile_args=compile_args)
    return ext, BuildExtension


class BuildPyWithSources(build_py):
    """Also ship csrc/ inside the package (culnig_ext/csrc): the JIT build compiles it on first use (and an
    AOT install can rebuild from it if its _C stops loading, e.g. after a torch upgrade). Editable installs
    read the repository's csrc/ directly."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            shutil.copytree(ROOT / "csrc", Path(self.build_lib) / "culnig_ext" / "csrc", dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.o", "*.so", "__pycache__"))


if aot_requested():
    _ext, _build_ext = _aot_extension()
    setup(ext_modules=[_ext], cmdclass={"build_ext": _build_ext, "build_py": BuildPyWithSources})
else:
    setup(cmdclass={"build_py": BuildPyWithSources})
