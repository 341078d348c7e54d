"""Snapshots of a scoring job, so that ``kill -9`` at any moment costs at most a few batches.

A checkpoint is a ``ScoreTable`` file (written atomically) holding the accumulators after the last complete batch,
plus what is needed to resume: the number of batches done (in the deterministic batch order), the provenance and
resume key (model, weights, dtype, attention, sites, clamp, batch size, window, shard, rank/world), and the
fingerprint of the items read so far, checked when the resumed run gets there. A checkpoint written for anything
else, or a truncated file, is refused with its path and the field that differs. Under torchrun each rank keeps its
own file (``<path>.rank<r>-of-<n>``).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Mapping

from culnig_ext.scoring.provenance import mismatch
from culnig_ext.scoring.table import ScoreTable

log = logging.getLogger("culnig")

KIND = "culnig-checkpoint/1"
DEFAULT_EVERY = 20
DEFAULT_MAX_SECONDS = 300.0


def rank_path(path: str | Path, rank: int, world: int) -> Path:
    """The checkpoint file of one rank (the path itself for a single process)."""
    path = Path(path)
    return path if world <= 1 else path.with_name(f"{path.name}.rank{rank}-of-{world}")


def resolve_checkpoint(spec: str | None, out: str | Path) -> str | None:
    """``--checkpoint`` as a path: ``auto`` -> ``<out>.ckpt`` (next to the output), ``none``/None -> None."""
    if spec is None or spec == "none":
        return None
    return f"{out}.ckpt" if spec == "auto" else str(spec)


def this_rank_path(path: str | Path) -> Path:
    """This process's checkpoint file (per rank under torchrun, from RANK/WORLD_SIZE)."""
    from culnig_ext.scoring.distributed import env_world

    rank, world = env_world() or (0, 1)
    return rank_path(path, rank, world)


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed from (names its path and why)."""


class Checkpointer:
    """Periodic atomic snapshots: after every ``every`` batches, and after any batch that ends more than
    ``max_seconds`` after the last snapshot (so slow batches still checkpoint every few minutes).

    Args:
        path: the checkpoint file (already made per-rank by the caller).
        key: everything the resumed run must share with the one that wrote it (provenance + resume key).
    """

    def __init__(self, path: str | Path, key: Mapping[str, str], every: int = DEFAULT_EVERY,
                 max_seconds: float = DEFAULT_MAX_SECONDS) -> None:
        if every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 batch, got {every}")
        self.path = Path(path)
        self.key = {k: str(v) for k, v in key.items()}
        self.every = every
        self.max_seconds = max_seconds
        self.last_done = 0
        self.last_time = time.monotonic()

    def load(self) -> ScoreTable | None:
        """The saved table if the file exists and matches ``key``; None if there is no file."""
        if not self.path.exists():
            return None
        try:
            saved = ScoreTable.load(self.path)
        except (ValueError, OSError) as exc:
            raise CheckpointError(f"checkpoint {self.path} cannot be read ({exc}); delete it to start over") from exc
        if saved.metadata.get("checkpoint") != KIND:
            raise CheckpointError(f"checkpoint {self.path} is not a culnig checkpoint (a finished table?); "
                                  "delete it or pass another checkpoint path")
        diff = mismatch(saved.metadata, self.key, tuple(self.key))
        if diff is not None:
            field, was, now = diff
            raise CheckpointError(f"checkpoint {self.path} was written with {field}={was!r}, this run has {now!r}; "
                                  "delete it or pass another checkpoint path")
        self.last_done = int(saved.metadata["batches_done"])
        return saved

    def due(self, done: int) -> bool:
        return done - self.last_done >= self.every or time.monotonic() - self.last_time >= self.max_seconds

    def save(self, snapshot: Callable[[], ScoreTable], done: int, extra: Mapping[str, str]) -> None:
        """Write ``snapshot()`` with ``done`` batches atomically (skipped if nothing new since the last one)."""
        if done <= self.last_done and self.path.exists():
            return
        table = snapshot()
        table.metadata.update(self.key)
        table.metadata.update(extra)
        table.metadata.update(checkpoint=KIND, batches_done=str(done))
        table.save(self.path)
        self.last_done, self.last_time = done, time.monotonic()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
