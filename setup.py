"""Ahead-of-time build of the fused attribution ops as ``culnig_ext._C``.

    pip install --no-build-isolation -e .     # editable: _C built in place into culnig_ext/
    pip install --no-build-isolation .        # regular install: _C and a copy of csrc/ in site-packages

``--no-build-isolation`` builds against the torch already installed (an isolated build would download
another torch). A CUDAExtension (with csrc/cuda/attribution_cuda.cu) is built when torch is a CUDA build
and CUDA_HOME is found (set TORCH_CUDA_ARCH_LIST to choose the GPUs); else a CppExtension. Set
CULNIG_NO_CUDA=1 to force the CPU-only build, CULNIG_PORTABLE_BUILD=1 to compile without -march=native.
Metadata lives in pyproject.toml.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import torch
from setuptools import setup
from setuptools.command.build_py import build_py
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).resolve().parent


def _load_build_module():
    """culnig_ext/_build.py, loaded by path (without importing the package) for the shared flags."""
    spec = importlib.util.spec_from_file_location("_culnig_build", ROOT / "culnig_ext" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _with_cuda() -> bool:
    if os.environ.get("CULNIG_NO_CUDA") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def _extension():
    flags = _load_build_module()
    # Paths relative to this file, as setuptools wants them.
    sources = ["csrc/culnig.cpp", "csrc/cpu/attribution_cpu.cpp"]
    compile_args = {"cxx": flags.cxx_flags()}
    if _with_cuda():
        sources.append("csrc/cuda/attribution_cuda.cu")
        compile_args["nvcc"] = flags.NVCC_FLAGS
        return CUDAExtension("culnig_ext._C", sources, include_dirs=[str(ROOT / "csrc")],
                             extra_compile_args=compile_args)
    return CppExtension("culnig_ext._C", sources, include_dirs=[str(ROOT / "csrc")],
                        extra_compile_args=compile_args)


class BuildPyWithSources(build_py):
    """Also ship csrc/ inside the package (culnig_ext/csrc) so that a non-editable install can JIT-build
    the ops again if its _C module ever fails to load (e.g. after a torch upgrade). Editable installs
    read the repo's csrc/ directly."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            shutil.copytree(ROOT / "csrc", Path(self.build_lib) / "culnig_ext" / "csrc", dirs_exist_ok=True)


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension, "build_py": BuildPyWithSources},
)
