"""Rows of the accuracy table: the original model, the model with a neuron set inhibited and the random sets on
one evaluation set, with the paired-bootstrap p-value, its interval, the power (MDE) and Holm's adjustment."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from culnig_ext.stats.bootstrap import holm, paired_bootstrap
from culnig_ext.stats.power import minimum_detectable_drop


@dataclass
class AccuracyRow:
    """One evaluation set in the accuracy table (accuracies in [0, 1]); see the module docstring."""

    eval_set: str
    original: float
    inhibited: float
    random: list[float]
    p_value: float | None
    n_items: int
    cultural: bool = True
    metric: str = "accuracy"
    diff_low: float | None = None
    diff_high: float | None = None
    mde: float | None = None
    p_holm: float | None = None

    @property
    def diff(self) -> float | None:
        """``inhibited - mean(random)``, None without random sets."""
        return None if self.random_mean is None else self.inhibited - self.random_mean

    @property
    def random_mean(self) -> float | None:
        return float(np.mean(self.random)) if self.random else None

    @property
    def random_sd(self) -> float | None:
        """Sample standard deviation (ddof=1) over the random sets; None with fewer than two."""
        return float(np.std(self.random, ddof=1)) if len(self.random) >= 2 else None


def accuracy_row(
    eval_set: str,
    original: Any,
    inhibited: Any,
    randoms: Sequence[Any],
    *,
    cultural: bool = True,
    metric: str = "accuracy",
    n_resamples: int = 10000,
    seed: int = 0,
) -> AccuracyRow:
    """A table row from ``EvalResult``s on the same items: p-value by paired bootstrap of ``inhibited`` against
    the per-item mean over the random sets (one-sided: inhibited lower).

    Args:
        metric: ``"accuracy"`` or ``"acc_norm"`` (cloze results only).
    """
    if metric not in ("accuracy", "acc_norm"):
        raise ValueError(f"accuracy_row({eval_set!r}): metric must be 'accuracy' or 'acc_norm', got {metric!r}")
    ids = [r.id for r in original.records]
    everything = [("original", original), ("inhibited", inhibited)]
    everything += [(f"randoms[{i}]", r) for i, r in enumerate(randoms)]
    for name, res in everything:
        if [r.id for r in res.records] != ids:
            raise ValueError(f"accuracy_row({eval_set!r}): {name} is not on the same items as original (in order)")
        if metric == "acc_norm" and res.correct_norm is None:
            raise ValueError(f"accuracy_row({eval_set!r}): {name} has no acc_norm (not a cloze evaluation)")

    def outcomes(res: Any):
        return res.correct if metric == "accuracy" else res.correct_norm

    def value(res: Any) -> float:
        return float(outcomes(res).mean())

    p = low = high = mde = None
    if randoms:
        a, b = outcomes(inhibited), np.stack([outcomes(r) for r in randoms])
        boot = paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed, alternative="less")
        p, low, high = boot.p_value, boot.ci_low, boot.ci_high
        mde = minimum_detectable_drop(a, b, n_resamples=n_resamples, seed=seed)
    return AccuracyRow(
        eval_set=eval_set, original=value(original), inhibited=value(inhibited),
        random=[value(r) for r in randoms], p_value=p, n_items=len(ids), cultural=cultural, metric=metric,
        diff_low=low, diff_high=high, mde=mde,
    )


def with_holm(rows: Sequence[AccuracyRow]) -> list[AccuracyRow]:
    """The rows with ``p_holm`` set: Holm-adjusted across the rows that have a p-value (``stats.holm``)."""
    tested = [i for i, r in enumerate(rows) if r.p_value is not None]
    adjusted = dict(zip(tested, holm([rows[i].p_value for i in tested])))
    return [dataclasses.replace(r, p_holm=adjusted.get(i)) for i, r in enumerate(rows)]
