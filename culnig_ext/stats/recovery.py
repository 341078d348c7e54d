"""Recovery metrics: how well a neuron ranking or a selected set finds known (planted) neurons.

Given a score per neuron of a universe (higher = more likely planted) and the planted neurons (``truth``):

* ``precision_at_k`` / ``recall_at_k``: of the top k neurons by score (ties broken by position, lower first), the
  share that is planted / the share of the planted that is there. At k = the number planted both are the same
  number (R-precision).
* ``average_precision`` and ``auroc``: the definitions of scikit-learn's ``average_precision_score`` (the
  step-wise area under the precision-recall curve, ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score
  thresholds, so tied scores are one threshold) and ``roc_auc_score`` (the Mann-Whitney statistic: the chance that
  a planted neuron outscores an unplanted one, ties counting one half). Written here, from one sort, because
  scikit-learn's per-call input checks cost ~0.1 s on the 46,080 gate neurons of SmolLM2 and the bootstrap makes
  thousands of calls; the tests check both against scikit-learn on tied and untied scores. A planted neuron the
  method cannot score (e.g. a neuron it filters out) gets the lowest score, not a missing one.
* ``set_metrics``: precision / recall / F1 of a selected set against the planted set.
* ``confusion``: ``M[c, d] = |S_c ∩ T_d| / |T_d|``, the share of group d's planted neurons in group c's selected
  set (the diagonal is each group's recall).
* ``percentile_interval``: a bootstrap percentile interval.
* ``rank_correlation``: Spearman's rho (scipy) of two equally long vectors, NaN when one is constant.

Pure functions of arrays and sets: nothing here knows about models or score tables.
"""
from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import numpy as np


def _check(scores: Sequence[float] | np.ndarray, truth: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    t = np.asarray(truth, dtype=bool).reshape(-1)
    if s.shape != t.shape:
        raise ValueError(f"scores ({s.size}) and truth ({t.size}) differ in length")
    if s.size == 0:
        raise ValueError("no neurons to rank")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (give neurons a method cannot rank the lowest score instead)")
    return s, t


def top_k(scores: Sequence[float] | np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores, highest first; ties by position (a stable descending sort)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    order = np.argsort(-s, kind="stable")
    return order[: min(int(k), s.size)]


def precision_at_k(scores, truth, k: int | None = None) -> float:
    """Share of the top ``k`` (default: the number planted) that is planted."""
    s, t = _check(scores, truth)
    k = int(t.sum()) if k is None else k
    if k <= 0:
        raise ValueError("precision at k needs k >= 1 (no planted neurons?)")
    return float(t[top_k(s, k)].sum() / min(k, s.size))


def recall_at_k(scores, truth, k: int | None = None) -> float:
    """Share of the planted neurons that is in the top ``k`` (default: the number planted)."""
    s, t = _check(scores, truth)
    n = int(t.sum())
    if n == 0:
        raise ValueError("recall needs at least one planted neuron")
    k = n if k is None else k
    return float(t[top_k(s, k)].sum() / n)


def _sorted_groups(s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores sorted descending, cut into runs of equal scores: per run its planted and unplanted count, and the
    run's last position (``[R]`` each)."""
    order = np.argsort(-s, kind="stable")
    values, planted = s[order], t[order]
    ends = np.flatnonzero(np.r_[values[1:] != values[:-1], True])
    tp = np.cumsum(planted)[ends]
    fp = (ends + 1) - tp
    return tp, fp, ends


def _ap(tp: np.ndarray, fp: np.ndarray) -> float:
    recall = tp / tp[-1]
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _auc(tp: np.ndarray, fp: np.ndarray) -> float:
    # each run: its unplanted neurons lose to the planted ones above the run, tie (1/2) with the run's planted ones
    run_tp, run_fp = np.diff(np.r_[0, tp]), np.diff(np.r_[0, fp])
    above = np.r_[0, tp[:-1]]
    return float(np.sum(run_fp * (above + 0.5 * run_tp)) / (tp[-1] * fp[-1]))


def average_precision(scores, truth) -> float:
    """Average precision as scikit-learn's ``average_precision_score``: ``sum_n (R_n - R_{n-1}) P_n`` over the
    distinct thresholds, highest first."""
    s, t = _check(scores, truth)
    if not t.any():
        raise ValueError("average precision needs at least one planted neuron")
    tp, fp, _ = _sorted_groups(s, t)
    return _ap(tp, fp)


def auroc(scores, truth) -> float:
    """AUROC as scikit-learn's ``roc_auc_score``: the chance that a planted neuron outscores an unplanted one (ties
    count 1/2)."""
    s, t = _check(scores, truth)
    if t.all() or not t.any():
        raise ValueError("AUROC needs planted and unplanted neurons")
    tp, fp, _ = _sorted_groups(s, t)
    return _auc(tp, fp)


def ranking_metrics(scores, truth, k: int | None = None) -> dict[str, float]:
    """``precision_at_k``, ``recall_at_k`` (k default: the number planted), ``average_precision``, ``auroc``, from
    one sort."""
    s, t = _check(scores, truth)
    n = int(t.sum())
    if n == 0 or n == t.size:
        raise ValueError("ranking metrics need planted and unplanted neurons")
    k = n if k is None else k
    if k <= 0:
        raise ValueError("precision at k needs k >= 1")
    order = np.argsort(-s, kind="stable")
    hits = float(t[order[:k]].sum())
    values, planted = s[order], t[order]
    ends = np.flatnonzero(np.r_[values[1:] != values[:-1], True])
    tp = np.cumsum(planted)[ends]
    fp = (ends + 1) - tp
    return {"precision_at_k": hits / min(k, s.size), "recall_at_k": hits / n, "average_precision": _ap(tp, fp),
            "auroc": _auc(tp, fp)}


def set_metrics(selected: set[Hashable] | Sequence[Hashable], truth: set[Hashable] | Sequence[Hashable]
                ) -> dict[str, float]:
    """Precision, recall and F1 of ``selected`` against ``truth`` (precision 0 for an empty selection), and the
    sizes."""
    sel, tru = set(selected), set(truth)
    if not tru:
        raise ValueError("recall needs at least one planted neuron")
    hit = len(sel & tru)
    precision = hit / len(sel) if sel else 0.0
    recall = hit / len(tru)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "selected": len(sel), "planted": len(tru),
            "hits": hit}


def confusion(selected: Mapping[str, set[Hashable]], truth: Mapping[str, set[Hashable]]) -> np.ndarray:
    """``float64 [len(selected), len(truth)]``: ``M[i, j] = |selected_i ∩ truth_j| / |truth_j|`` (rows and columns
    in the mappings' order)."""
    cols = list(truth.values())
    if any(not t for t in cols):
        raise ValueError("every group needs at least one planted neuron")
    return np.array([[len(set(s) & set(t)) / len(t) for t in cols] for s in selected.values()], dtype=np.float64)


def percentile_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval of bootstrap replicates (numpy's linear interpolation)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def rank_correlation(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho of ``x`` and ``y`` (scipy, average ranks for ties); NaN when either is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(x, dtype=np.float64).reshape(-1), np.asarray(y, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"rank correlation needs two vectors of the same length >= 2, got {a.size} and {b.size}")
    if np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    return float(spearmanr(a, b).statistic)


__all__ = ["auroc", "average_precision", "confusion", "percentile_interval", "precision_at_k", "rank_correlation",
           "ranking_metrics", "recall_at_k", "set_metrics", "top_k"]
