"""``culnig build``: compile the fused C++/CUDA kernels now (else on first use), check them, cache them. The options
and the work are ``culnig_ext.kernels.build``'s (also ``python -m culnig_ext.kernels.build``)."""
from __future__ import annotations

import argparse

NAME = "build"


def add_parser(sub) -> argparse.ArgumentParser:
    from culnig_ext.kernels.build import add_arguments

    p = sub.add_parser(NAME, help="compile the fused C++/CUDA kernels now (else on first use), check, cache")
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> str:
    from culnig_ext.kernels import build as kernels_build

    return kernels_build.run(args)
