"""The module study's settings: ``StudySettings`` (how each end is picked and trained) and its defaults, the
paper's. No torch here: the CLI reads these defaults to build its parser."""
from __future__ import annotations

import math
from dataclasses import dataclass

ENDS = ("top", "bottom", "random")
BY = ("count", "density")

# The paper's training setup (CULNIG's train/config.yaml): constant AdamW lr, batch size, gradient accumulation.
PAPER_LR = 3e-5
PAPER_BATCH_SIZE = 4
PAPER_GRAD_ACCUM = 4


@dataclass
class StudySettings:
    """How each end is picked and trained (defaults: the paper's)."""

    ends: tuple[str, ...] = ENDS
    budget: float = 0.10
    by: str = "count"
    lora: bool = False
    epochs: int = 1
    lr: float = PAPER_LR
    batch_size: int = PAPER_BATCH_SIZE
    grad_accum: int = PAPER_GRAD_ACCUM
    max_steps: int | None = None
    seed: int = 0
    eval_batch_size: int = 16
    n_resamples: int = 10000
    progress: bool = True

    def check(self) -> None:
        """Refuse bad settings (naming the option) before anything is loaded."""
        if not self.ends or any(e not in ENDS for e in self.ends) or len(set(self.ends)) != len(self.ends):
            raise ValueError(f"--end must be distinct values of {ENDS}, got {self.ends!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or not 0 < self.budget <= 1:
            raise ValueError(f"--budget must be a share of the decoder's parameters in (0, 1], got {self.budget!r}")
        if self.by not in BY:
            raise ValueError(f"--by must be one of {BY}, got {self.by!r}")
        from culnig_ext.studies.preflight import positive_int

        for flag, name in (("--epochs", "epochs"), ("--train-batch-size", "batch_size"),
                           ("--grad-accum", "grad_accum"), ("--batch-size", "eval_batch_size"),
                           ("n_resamples", "n_resamples")):
            positive_int(flag, getattr(self, name))
        if self.max_steps is not None:
            positive_int("--max-steps", self.max_steps)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr!r}")


__all__ = ["BY", "ENDS", "PAPER_BATCH_SIZE", "PAPER_GRAD_ACCUM", "PAPER_LR", "StudySettings"]
