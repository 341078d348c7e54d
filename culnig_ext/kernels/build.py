"""Build the fused kernels ahead of first use: ``culnig build`` or ``python -m culnig_ext.kernels.build``.

A plain ``pip install`` ships the C++/CUDA sources and compiles them the first time an op runs (~1 min). This
command does that step now -- in a Dockerfile, a cluster's setup job, or CI -- so that later processes only load
the cached library. It takes the same path as the first op call (``culnig_ext.kernels.loader.load``: the AOT module if
one was installed, else the cached JIT build, built if missing), checks one value of each kernel against plain
torch, and prints what was loaded and where the cache lives.

    culnig build            # build (or find) the kernels for this torch / CUDA / CPU
    culnig build --clean    # delete every cached culnig build in the cache folder first, then build
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys


class BuildError(OSError):
    """The kernels could not be built or loaded on this machine (no compiler, no ninja, a compile error).
    An OSError: it is about the machine's tools, not about the caller's data."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``culnig build`` (shared by the ``culnig`` CLI and ``python -m culnig_ext.kernels.build``)."""
    parser.add_argument("--clean", action="store_true",
                        help="delete every cached culnig build in the extensions folder first, then build")


def _check_kernels(with_cuda: bool) -> list[str]:
    """Run each compiled kernel once on a small input against plain torch; the devices checked."""
    import torch

    gen = torch.Generator().manual_seed(0)
    act = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    grad = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[True, False, True], [False, True, True]])
    expected = (act * grad).masked_fill(~mask[:, :, None], float("-inf")).amax(1)
    devices = ["cpu"] + (["cuda"] if with_cuda and torch.cuda.is_available() else [])
    for device in devices:
        got = torch.ops.culnig.max_attribution(act.to(device), grad.to(device), mask.to(device)).cpu()
        if not torch.equal(got, expected):
            raise BuildError(f"the {device} kernel of the loaded culnig build gives wrong values "
                             f"({got.tolist()} != {expected.tolist()}); rebuild with `culnig build --clean`")
    return devices


def run(args: argparse.Namespace) -> str:
    """Clean (if asked), load or build the kernels, check them; a summary. Raises BuildError on failure."""
    from culnig_ext.kernels import loader

    if args.clean:
        removed = loader.cached_builds()
        for folder in removed:
            shutil.rmtree(folder)
        header = f"removed {len(removed)} cached build(s) from {loader.cache_root()}"
        # Build in a fresh process: this one may have loaded a build already (the culnig CLI imports the ops),
        # and a library registering the same ops cannot be loaded twice into one process.
        proc = subprocess.run([sys.executable, "-m", "culnig_ext.kernels.build"], stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise BuildError(f"{header}; the build that followed failed (its error is above)")
        return header + "\n" + proc.stdout.rstrip("\n")
    result = loader.load()
    if result.kind == "none":
        raise BuildError(f"no kernels: {result.detail}. Without them culnig_ext runs the slower pure-PyTorch "
                         "reference ops. Install a C++ compiler (g++ or clang) and run `culnig build` again "
                         "(CULNIG_BUILD_VERBOSE=1 shows the compiler output)")
    checked = _check_kernels(result.with_cuda)
    cuda = "yes" if result.with_cuda else "no"
    lines = [
        f"culnig kernels ready ({result.kind}): {result.detail}",
        f"  CUDA kernels: {cuda}; checked against plain torch on: {', '.join(checked)}",
    ]
    if result.kind == "jit":
        lines.append(f"  cache: {loader.cache_root()} (clear it with `culnig build --clean`)")
    else:
        lines.append("  the ahead-of-time module culnig_ext._C is used; nothing to build")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m culnig_ext.kernels.build``; 0 when the kernels are ready, 1 with the reason if not."""
    parser = argparse.ArgumentParser(prog="python -m culnig_ext.kernels.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        print(run(args))
    except BuildError as exc:
        print(f"culnig build: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
