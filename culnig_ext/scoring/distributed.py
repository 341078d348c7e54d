"""Data-parallel scoring on ``torch.distributed``: who am I, which batches are mine, add up the tables, fail together.

- ``discover``: a process group already initialised by the caller is used as is; otherwise, under ``torchrun``
  (``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` set) one is initialised here, gloo on CPU and nccl on CUDA, with a bounded
  timeout (``CULNIG_DIST_TIMEOUT`` seconds, default 1800), and destroyed by ``close``.
- ``assign``: every rank reads the same stream, so every rank sees the same windows; each window's batches are
  handed out by token count (longest first to the least-loaded rank, loads carried over windows): the same answer on
  every rank with no communication.
- ``check``: after each window, every rank all-reduces a failure flag. A rank that raises reports the failure before
  re-raising, so the others raise too instead of waiting; a rank that dies outright makes their next collective fail
  at the process group's timeout. Either way nobody hangs.
- ``all_reduce_sum``: the float64 accumulators, counts and probability sums, summed in one flat buffer.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

import torch
import torch.distributed as dist

log = logging.getLogger("culnig")

DEFAULT_TIMEOUT_S = 1800.0


@dataclass
class Dist:
    """This process's place in a job.

    Attributes:
        rank, world: ``torch.distributed`` rank and world size.
        device: where collectives run: ``cpu`` for gloo, ``cuda:LOCAL_RANK`` for nccl.
        owned: the process group was initialised here (``close`` destroys it).
    """

    rank: int
    world: int
    device: torch.device
    owned: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` from the environment (torchrun sets them), or None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        try:
            return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        except ValueError:
            raise ValueError(f"RANK={os.environ['RANK']!r} / WORLD_SIZE={os.environ['WORLD_SIZE']!r} are not integers")
    return None


def local_device() -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def timeout_seconds() -> float:
    value = os.environ.get("CULNIG_DIST_TIMEOUT", "")
    try:
        return float(value) if value else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"CULNIG_DIST_TIMEOUT={value!r} is not a number of seconds") from None


def discover(distributed: bool | None = None) -> Dist | None:
    """The job this process belongs to, or None for a single process.

    Args:
        distributed: None (default): on when a process group is initialised or RANK/WORLD_SIZE are set; True:
            required (an error if neither holds); False: off.
    """
    if distributed is False:
        return None
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        device = local_device() if backend == "nccl" else torch.device("cpu")
        return Dist(dist.get_rank(), dist.get_world_size(), device, owned=False)
    env = env_world()
    if env is None:
        if distributed:
            raise ValueError("distributed=True, but no process group is initialised and RANK/WORLD_SIZE are not set "
                             "(start the job with torchrun)")
        return None
    rank, world = env
    if world == 1:
        return None
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} outside [0, WORLD_SIZE={world})")
    device = local_device()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=rank, world_size=world,
                            timeout=timedelta(seconds=timeout_seconds()))
    log.info("rank %d of %d (%s on %s)", rank, world, backend, device)
    return Dist(rank, world, device, owned=True)


def close(d: Dist | None) -> None:
    """Destroy the process group if ``discover`` created it."""
    if d is not None and d.owned and dist.is_initialized():
        dist.destroy_process_group()


def assign(token_counts: Sequence[int], loads: list[int]) -> list[int]:
    """Rank of each batch: longest first to the least-loaded rank (ties: lower batch index, lower rank).

    ``loads`` (tokens per rank so far, one entry per rank) is updated in place, so balance carries over windows.
    Deterministic: every rank computes the same assignment from the same window.
    """
    owner = [0] * len(token_counts)
    for j in sorted(range(len(token_counts)), key=lambda j: (-token_counts[j], j)):
        r = min(range(len(loads)), key=lambda r: (loads[r], r))
        owner[j] = r
        loads[r] += token_counts[j]
    return owner


class RankFailed(RuntimeError):
    """Another rank of the job failed; this one stops too."""


def check(d: Dist, ok: bool) -> None:
    """All ranks agree that everyone is fine, or all raise. Call it the same number of times on every rank."""
    flags = torch.zeros(d.world, dtype=torch.int64, device=d.device)
    flags[d.rank] = 0 if ok else 1
    dist.all_reduce(flags, op=dist.ReduceOp.SUM)
    failed = [r for r, f in enumerate(flags.tolist()) if f]
    if failed and ok:
        raise RankFailed(f"rank(s) {failed} of the job failed; rank {d.rank} stops too (see their error)")


def all_reduce_sum(d: Dist, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Sum each tensor over all ranks (one collective on a flat buffer); returns new tensors on the CPU.

    ``tensors`` are float64 or int64 (counts travel as float64: exact below 2^53)."""
    flat = torch.cat([t.detach().reshape(-1).to(d.device, torch.float64) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat.cpu()
    out, offset = [], 0
    for t in tensors:
        n = t.numel()
        out.append(flat[offset : offset + n].reshape(t.shape).to(t.dtype))
        offset += n
    return out
