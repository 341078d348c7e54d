"""Load the culnig C++/CUDA extension that registers ``torch.ops.culnig.*``.

Order of preference:

1. the ahead-of-time module ``culnig_ext._C``, present only when it was asked for at install time
   (``CULNIG_AOT=1 pip install --no-build-isolation .``, see setup.py) -- no compiler needed at import;
2. a just-in-time build of the same sources (the repository's csrc/, or the copy a pip install ships in
   ``culnig_ext/csrc``) with ``torch.utils.cpp_extension.load`` + ninja against the running torch: CPU kernels,
   plus the CUDA ones when torch is a CUDA build and nvcc is found. It is cached in torch's extensions folder
   (``TORCH_EXTENSIONS_DIR`` if set, else ``~/.cache/torch_extensions/py311_cpu``...) under a name from
   :func:`build_key` (torch version, CUDA version, CPU capability, a hash of the sources and flags, GPU
   architectures), so a torch upgrade, another machine or another checkout with other kernels sharing the folder
   gets its own build. The first build says so once on stderr; later
   processes find the library and only load it. ``culnig build`` runs this step ahead of first use;
3. nothing: :func:`load` returns ``kind="none"`` with the reason, and the caller (``culnig_ext.kernels.ops``) warns
   once and falls back to the pure-PyTorch reference.

Environment variables:
    CULNIG_NO_AOT=1       ignore ``culnig_ext._C`` and use the JIT build (tests of the JIT cache use it).
    CULNIG_NO_CUDA=1      build without the CUDA sources.
    TORCH_CUDA_ARCH_LIST  GPU architectures of a CUDA build (default: see :func:`cuda_arch_list`).
    CULNIG_BUILD_VERBOSE=1  show the compiler output of the JIT build.
    CULNIG_CPU_CAPABILITY=default|avx2|avx512  which CPU kernel variant runs (default: the best the CPU runs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
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
    No -march: the build is portable (a JIT cache on a shared home folder, or a wheel, runs on any x86-64
    CPU). The CPU kernel is compiled three times instead, for the baseline, AVX2 and AVX-512 (one source
    file per capability, each switching the target with `#pragma GCC target`), and the variant is chosen at
    load time by what the CPU supports (csrc/cpu/attribution_cpu.cpp; CULNIG_CPU_CAPABILITY overrides).
    """
    return ["-O3", "-fopenmp"]


# No --use_fast_math: it would flush denormals and change the max/NaN semantics shared with the CPU.
NVCC_FLAGS = ["-O3"]

# GPU architectures of a CUDA build made where no GPU is visible and TORCH_CUDA_ARCH_LIST is unset:
# A100 (8.0), H100/H200 (9.0), B200 (10.0). Documented in the README.
DEFAULT_CUDA_ARCHS = ("8.0", "9.0", "10.0")

# A build lock older than this was left by a killed build (a build takes minutes, ~7 min for CPU+CUDA on a loaded
# 2-core machine): it is removed, with a warning, instead of making every later process wait on it forever.
STALE_LOCK_SECONDS = 30 * 60

BUILD_MESSAGE = "building culnig kernels, ~1 min, once"


def sources_dir() -> Path | None:
    """Folder holding culnig.cpp, cpu/ and cuda/: the repo's csrc/ (source checkout, editable install) or
    the copy shipped inside the package (non-editable install). None if neither exists."""
    package = Path(__file__).resolve().parent.parent  # culnig_ext/
    for candidate in (package.parent / "csrc", package / "csrc"):
        if (candidate / "culnig.cpp").is_file():
            return candidate
    return None


def source_files(root: Path, with_cuda: bool) -> list[str]:
    """The translation units of the extension, CUDA one included when with_cuda."""
    cpu = root / "cpu"
    files = [root / "culnig.cpp", cpu / "attribution_cpu.cpp"]
    files += [cpu / f"attribution_cpu_{capability}.cpp" for capability in ("default", "avx2", "avx512")]
    if with_cuda:
        files.append(root / "cuda" / "attribution_cuda.cu")
    return [str(f) for f in files]


# What the hash of the sources covers: every file of csrc/ (or of the shipped copy) with one of these endings.
SOURCE_SUFFIXES = (".cpp", ".cc", ".h", ".hpp", ".cu", ".cuh", ".inc", ".def")


def source_hash(root: Path, with_cuda: bool) -> str:
    """A short hash (10 hex digits of SHA-256) of the kernel sources under ``root`` and the build flags: every
    file ending in :data:`SOURCE_SUFFIXES` (by its path relative to ``root`` and its bytes, in sorted order), the
    host compiler flags, and for a CUDA build the nvcc flags. Two checkouts with the same sources get the same
    hash wherever they are; one changed byte or flag gives another."""
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES)
    for path in files:
        rel = path.relative_to(root).as_posix().encode()
        data = path.read_bytes()
        h.update(b"file\0%d\0%s\0%d\0" % (len(rel), rel, len(data)))
        h.update(data)
    h.update(("cxx\0" + "\0".join(cxx_flags())).encode())
    if with_cuda:
        h.update(("\0nvcc\0" + "\0".join(NVCC_FLAGS)).encode())
    return h.hexdigest()[:10]


def _has_cuda_kernel() -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key("culnig::max_attribution", "CUDA")


def cuda_build_possible() -> bool:
    """Whether a build should include the CUDA kernels: torch is a CUDA build, nvcc is found (CUDA_HOME) and
    CULNIG_NO_CUDA is not 1. No GPU is needed (a build in a Docker image has none)."""
    if os.environ.get("CULNIG_NO_CUDA") == "1" or torch.version.cuda is None:
        return False
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    return home is not None and os.path.isfile(os.path.join(home, "bin", "nvcc"))


def _nvcc_archs() -> set[str] | None:
    """Compute capabilities the nvcc of CUDA_HOME can compile for ("8.0", ...), or None if it cannot say."""
    from torch.utils import cpp_extension

    try:
        out = subprocess.run([os.path.join(cpp_extension.CUDA_HOME or "", "bin", "nvcc"), "--list-gpu-arch"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    archs = {f"{m.group(1)[:-1]}.{m.group(1)[-1]}" for m in re.finditer(r"compute_(\d+)", out)}
    return archs or None


def cuda_arch_list() -> str:
    """GPU architectures of a CUDA build, as TORCH_CUDA_ARCH_LIST spells them ("8.0;9.0").

    TORCH_CUDA_ARCH_LIST if set; else the compute capabilities of the GPUs present; else
    :data:`DEFAULT_CUDA_ARCHS`, keeping those the nvcc knows (torch itself would fail with an IndexError when
    asked for a CUDA build with neither a GPU nor a list).
    """
    given = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if given:
        return given
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in caps)
    known = _nvcc_archs()
    archs = [a for a in DEFAULT_CUDA_ARCHS if known is None or a in known]
    if not archs:
        raise RuntimeError(f"the nvcc in CUDA_HOME knows none of the default GPU architectures "
                           f"{';'.join(DEFAULT_CUDA_ARCHS)}; set TORCH_CUDA_ARCH_LIST")
    return ";".join(archs)


def _accelerator() -> str:
    """torch's GPU runtime as torch's extension folders name it: "cu130", "rocm63" or "cpu"."""
    if torch.version.hip is not None:
        return "rocm" + torch.version.hip.replace(".", "")
    if torch.version.cuda is not None:
        return "cu" + torch.version.cuda.replace(".", "")
    return "cpu"


def build_key(with_cuda: bool, root: Path | None = None) -> str:
    """Name of a JIT build, and of its folder in the extensions cache: everything that makes a built library
    unusable elsewhere goes in it, so that builds for different setups sit side by side and none is loaded
    where it does not fit. Now: torch version, CUDA (or ROCm) version of torch, Python version, the CPU
    capability torch detects (no longer needed since the build is portable, see cxx_flags; kept so that cached
    builds keep their names; CULNIG_PORTABLE_BUILD=1 only renames the key now), the :func:`source_hash` of the
    sources in ``root`` (default :func:`sources_dir`; none when there are no sources) and the build flags, and
    for a build with CUDA kernels its GPU architectures. E.g. ``culnig_t2_13_0_cpu_py311_avx512_src0123456789``.

    With the sources in the key, two checkouts with different kernels sharing one extensions folder never
    share (and never rebuild over each other's) build folder; ``culnig build --clean`` removes old ones.
    """
    version = torch.__version__.split("+")[0]
    accel = _accelerator()
    cpu = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("CULNIG_PORTABLE_BUILD") == "1":
        cpu = "portable"
    parts = [f"t{version}", accel, f"py{sys.version_info.major}{sys.version_info.minor}", cpu]
    root = root if root is not None else sources_dir()
    if root is not None:
        parts.append("src" + source_hash(root, with_cuda))
    if with_cuda:
        parts.append("sm" + "_".join(a.replace(".", "").replace("+PTX", "ptx")
                                     for a in re.split(r"[;\s]+", cuda_arch_list()) if a))
    elif accel != "cpu":
        parts.append("nocuda")
    return "culnig_" + re.sub(r"[^0-9A-Za-z_]", "_", "_".join(parts)).lower()


def cache_root() -> Path:
    """The folder holding the JIT builds (one subfolder per :func:`build_key`): TORCH_EXTENSIONS_DIR if set,
    else torch's default, ``<user cache>/torch_extensions/py<ver>_<accelerator>`` (as torch computes it)."""
    from torch.utils import cpp_extension

    given = os.environ.get("TORCH_EXTENSIONS_DIR")
    if given:
        return Path(given)
    python = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(cpp_extension.get_default_build_root()) / f"{python}_{_accelerator()}"


def cached_builds() -> list[Path]:
    """The culnig build folders in :func:`cache_root` (all keys, this setup's and others')."""
    root = cache_root()
    return sorted(p for p in root.glob("culnig_*") if p.is_dir()) if root.is_dir() else []


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
        warnings.warn(
            f"culnig_ext: the built module culnig_ext._C failed to import ({exc}); trying a JIT build. "
            "Rebuild it with `CULNIG_AOT=1 pip install --no-build-isolation .`, or delete it to use the JIT build",
            stacklevel=3,
        )
        return None
    return LoadResult("aot", str(module.__file__), _has_cuda_kernel())


def _load_jit() -> LoadResult:
    root = sources_dir()
    if root is None:
        return LoadResult("none", "the C++ sources (csrc/) are not shipped with this installation", False)
    failures = []
    # A failed CUDA build still leaves the CPU kernels worth having: retry without the .cu file.
    for cuda in ([True, False] if cuda_build_possible() else [False]):
        result = _jit_build(root, cuda)
        if result.kind == "jit":
            if failures:
                warnings.warn(f"culnig_ext: CUDA kernels unavailable ({failures[0]}); CUDA tensors use the "
                              "reference ops", RuntimeWarning, stacklevel=3)
            return result
        failures.append(result.detail)
    return LoadResult("none", failures[-1], False)


def _ninja_path() -> str:
    """PATH with the folder of the ``ninja`` pip package appended when no ninja is on PATH (a virtualenv
    used without activating it has its ninja outside PATH; torch looks for it there)."""
    path = os.environ.get("PATH", "")
    if shutil.which("ninja", path=path) is None:
        try:
            import ninja  # the pip package, a dependency of culnig_ext
        except ImportError:
            return path
        return os.pathsep.join(p for p in (path, getattr(ninja, "BIN_DIR", "")) if p)
    return path


def _wait_for_other_build(build_dir: Path, poll_seconds: float = 1.0) -> None:
    """Wait while another process holds the build lock of build_dir (torch's ``lock`` file). A lock older
    than STALE_LOCK_SECONDS was left by a build that was killed: it is removed with a warning, so a dead
    build never hangs the processes after it (torch itself would wait on it forever)."""
    lock = build_dir / "lock"
    said = False
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age > STALE_LOCK_SECONDS:
            warnings.warn(f"culnig_ext: removing the build lock {lock}, left {age / 60:.0f} min ago by a build "
                          "that did not finish", RuntimeWarning, stacklevel=4)
            lock.unlink(missing_ok=True)
            return
        if not said:
            print(f"culnig_ext: waiting for another process building culnig kernels in {build_dir}",
                  file=sys.stderr, flush=True)
            said = True
        time.sleep(poll_seconds)


def _jit_build(root: Path, with_cuda: bool) -> LoadResult:
    from torch.utils import cpp_extension

    verbose = os.environ.get("CULNIG_BUILD_VERBOSE") == "1"
    saved_path, saved_arch = os.environ.get("PATH"), os.environ.get("TORCH_CUDA_ARCH_LIST")
    try:
        name = build_key(with_cuda, root)
        build_dir = cache_root() / name
        build_dir.mkdir(parents=True, exist_ok=True)
        _wait_for_other_build(build_dir)
        if not any(build_dir.glob("*.so")):
            print(f"culnig_ext: {BUILD_MESSAGE} (into {build_dir})", file=sys.stderr, flush=True)
        os.environ["PATH"] = _ninja_path()
        if with_cuda:
            os.environ["TORCH_CUDA_ARCH_LIST"] = cuda_arch_list()
        path = cpp_extension.load(
            name=name,
            sources=source_files(root, with_cuda),
            extra_cflags=cxx_flags(),
            extra_cuda_cflags=NVCC_FLAGS,
            extra_include_paths=[str(root)],
            build_directory=str(build_dir),
            with_cuda=with_cuda,
            is_python_module=False,  # loads the library with torch.ops.load_library
            verbose=verbose,
        )
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as exc:
        # No compiler / ninja, or a compile error: report the first line of the reason.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return LoadResult("none", f"JIT build failed: {first}", False)
    finally:
        for key, value in (("PATH", saved_path), ("TORCH_CUDA_ARCH_LIST", saved_arch)):
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return LoadResult("jit", str(path), _has_cuda_kernel())


def load() -> LoadResult:
    """Load the extension once per process (AOT module, else JIT build) and return how it went."""
    global _RESULT
    if _RESULT is None:
        _RESULT = _load_aot() or _load_jit()
    return _RESULT
