"""Load the culnig C++/CUDA extension that registers ``torch.ops.culnig.*``.

Order of preference:

1. the ahead-of-time module ``culnig_ext._C`` built by ``setup.py`` (``pip install --no-build-isolation .``
   or ``-e .``) -- no compiler needed at import;
2. a just-in-time build of the same sources with ``torch.utils.cpp_extension.load`` + ninja, cached in the
   standard torch extensions folder (``TORCH_EXTENSIONS_DIR`` honoured). Later processes reuse the cache:
   ninja finds nothing to do and the shared library is only loaded;
3. nothing: :func:`load` returns ``kind="none"`` with the reason, and the caller (``culnig_ext.ops``) warns
   once and falls back to the pure-PyTorch reference.

Environment variables:
    CULNIG_NO_AOT=1       ignore ``culnig_ext._C`` and use the JIT build (tests of the JIT cache use it).
    CULNIG_NO_CUDA=1      build the JIT extension without its CUDA sources.
    CULNIG_BUILD_VERBOSE=1  show the compiler output of the JIT build.
    CULNIG_PORTABLE_BUILD=1  compile without -march=native (for binaries that run on other machines).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import torch


@dataclasses.dataclass(frozen=True)
class LoadResult:
    """How the extension was obtained.

    kind: "aot" (culnig_ext._C), "jit" (cpp_extension.load) or "none".
    detail: path of the loaded library, or why nothing was loaded.
    with_cuda: whether the loaded library contains the CUDA kernels.
    """

    kind: str
    detail: str
    with_cuda: bool


_RESULT: LoadResult | None = None



def cxx_flags() -> list[str]:
    """Host compiler flags, shared by the JIT build and setup.py so both compile alike.

    -fopenmp: at::parallel_for is an inline OpenMP loop in the ATen headers; compiled without it, the CPU
    kernel runs on a single thread (silently: ~2x slower on 2 cores). The OpenMP calls resolve to the
    libgomp that libtorch_cpu already loads, so the op shares torch's thread pool and thread count.
    -march=native lets the compiler use the machine's widest vectors (the CPU kernel's AVX-512 / AVX2 +
    F16C paths; ~2x faster than the x86-64 baseline, notably for bfloat16/float16 conversions). Both
    builds compile on the machine that runs them; set CULNIG_PORTABLE_BUILD=1 when building a binary for
    other machines (scalar CPU loop).
    """
    if os.environ.get("CULNIG_PORTABLE_BUILD") == "1":
        return ["-O3", "-fopenmp"]
    return ["-O3", "-march=native", "-fopenmp"]


# No --use_fast_math: it would flush denormals and change the max/NaN semantics shared with the CPU.
NVCC_FLAGS = ["-O3"]


def sources_dir() -> Path | None:
    """Folder holding culnig.cpp, cpu/ and cuda/: the repo's csrc/ (source checkout, editable install) or
    the copy shipped inside the package (non-editable install). None if neither exists."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "csrc", here / "csrc"):
        if (candidate / "culnig.cpp").is_file():
            return candidate
    return None


def source_files(root: Path, with_cuda: bool) -> list[str]:
    """The translation units of the extension, CUDA one included when with_cuda."""
    files = [root / "culnig.cpp", root / "cpu" / "attribution_cpu.cpp"]
    if with_cuda:
        files.append(root / "cuda" / "attribution_cuda.cu")
    return [str(f) for f in files]


def _has_cuda_kernel() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("culnig::max_attribution", "CUDA")


def _load_aot() -> LoadResult | None:
    """Import culnig_ext._C if it was built; None if it does not exist. A module that exists but fails to
    import (e.g. built against another torch) is reported, not hidden, and the JIT build is tried."""
    if os.environ.get("CULNIG_NO_AOT") == "1":
        return None
    if importlib.util.find_spec("culnig_ext._C") is None:
        return None
    try:
        module = importlib.import_module("culnig_ext._C")
    except ImportError as exc:  # stale build: fall through to JIT, but say so
        import warnings

        warnings.warn(
            f"culnig_ext: the built module culnig_ext._C failed to import ({exc}); trying a JIT build. "
            "Rebuild it with `pip install --no-build-isolation -e .`",
            stacklevel=3,
        )
        return None
    return LoadResult("aot", str(module.__file__), _has_cuda_kernel())


def _load_jit() -> LoadResult:
    root = sources_dir()
    if root is None:
        return LoadResult("none", "the C++ sources (csrc/) are not shipped with this installation", False)
    from torch.utils import cpp_extension

    with_cuda = (
        torch.cuda.is_available()
        and torch.version.cuda is not None
        and cpp_extension.CUDA_HOME is not None
        and os.environ.get("CULNIG_NO_CUDA") != "1"
    )
    failures = []
    # A failed CUDA build still leaves the CPU kernels worth having: retry without the .cu file.
    for cuda in ([True, False] if with_cuda else [False]):
        result = _jit_build(root, cuda)
        if result.kind == "jit":
            if failures:
                import warnings

                warnings.warn(f"culnig_ext: CUDA kernels unavailable ({failures[0]}); CUDA tensors use the "
                              "reference ops", RuntimeWarning, stacklevel=3)
            return result
        failures.append(result.detail)
    return LoadResult("none", failures[-1], False)


def _jit_build(root: Path, with_cuda: bool) -> LoadResult:
    from torch.utils import cpp_extension

    name = "culnig_ext_cuda" if with_cuda else "culnig_ext_cpu"
    verbose = os.environ.get("CULNIG_BUILD_VERBOSE") == "1"
    try:
        build_dir = cpp_extension._get_build_directory(name, False)
        if not os.path.exists(os.path.join(build_dir, name + ".so")):
            print(f"culnig_ext: building the C++ extension in {build_dir} (first import only, ~1 min)...",
                  file=sys.stderr, flush=True)
        path = cpp_extension.load(
            name=name,
            sources=source_files(root, with_cuda),
            extra_cflags=cxx_flags(),
            extra_cuda_cflags=NVCC_FLAGS,
            extra_include_paths=[str(root)],
            with_cuda=with_cuda,
            is_python_module=False,  # loads the library with torch.ops.load_library
            verbose=verbose,
        )
    except (RuntimeError, OSError, ImportError) as exc:
        # No compiler / ninja, or a compile error: report the first line of the reason.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return LoadResult("none", f"JIT build failed: {first}", False)
    return LoadResult("jit", str(path), _has_cuda_kernel())


def load() -> LoadResult:
    """Load the extension once per process (AOT module, else JIT build) and return how it went."""
    global _RESULT
    if _RESULT is None:
        _RESULT = _load_aot() or _load_jit()
    return _RESULT
