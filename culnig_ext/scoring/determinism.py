"""Deterministic algorithms for a scoring job: ``deterministic(True)`` turns on torch's deterministic algorithms for
the block (and sets ``CUBLAS_WORKSPACE_CONFIG``, which cuBLAS needs for them, when it is not set), then restores
both. On the CPU the scorer is deterministic already (the fused op adds samples of a group in sample order); on a GPU
some of torch's kernels (e.g. atomics in index_add/scatter backward, cuBLAS split-K) may add in a different order
from run to run, so two runs, or a run resumed from its checkpoint, can differ in the last bits. With it, they do
not, at some cost in speed, and an operation that has no deterministic implementation raises instead of running.
``culnig score --deterministic`` and ``culnig run --deterministic`` use it; it is recorded in the score table's
provenance, so a resume never mixes the two modes."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

#: cuBLAS's setting for deterministic results (``:16:8`` would also do, with a smaller workspace).
CUBLAS_WORKSPACE = ":4096:8"


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """torch's deterministic algorithms inside the block when ``enabled`` (nothing changes otherwise); the previous
    setting and ``CUBLAS_WORKSPACE_CONFIG`` are restored on exit, also after an exception."""
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    before_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    env_before = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if env_before is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)
        if env_before is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


__all__ = ["CUBLAS_WORKSPACE", "deterministic"]
