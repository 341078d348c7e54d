"""Is inhibiting our neurons worse than inhibiting random ones? A paired bootstrap over items.

Both conditions are evaluated on the same items, so the test resamples *items* (with replacement) and keeps each
item's pair of outcomes together. The statistic is the accuracy difference ``mean(a) - mean(b)``.

Why not ``scipy.stats.bootstrap(paired=True)``: it gives confidence intervals but no p-value, and its default BCa
interval is undefined (nan, with warnings) when every resample gives the same value, e.g. two identical
conditions. The numpy version below is short, seeded, and gives both.

p-value (Hall & Wilson 1991): the bootstrap distribution of ``d* - d`` approximates the null distribution of the
statistic (the resampled differences re-centred on 0). For ``alternative="less"`` (H1: accuracy under A is lower)
``p = (1 + #{d*_r - d <= d}) / (1 + R)`` over R resamples; the ``+1`` keeps p > 0 and makes the test valid (never
anti-conservative) for a finite R. ``"greater"`` and ``"two-sided"`` are the mirrored and absolute versions.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

ALTERNATIVES = ("less", "greater", "two-sided")
_CHUNK = 4_000_000  # resampled entries drawn at once: bounds memory at ~32 MB of indices


@dataclass(frozen=True)
class BootstrapResult:
    """The outcome of ``paired_bootstrap``.

    Attributes:
        diff: observed ``mean(a) - mean(b)`` over items.
        ci_low, ci_high: percentile bootstrap interval of the difference at ``confidence_level``.
        p_value: one- or two-sided bootstrap p-value (see the module docstring).
        n_items, n_resamples, alternative, confidence_level, seed: how it was computed.
    """

    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    n_items: int
    n_resamples: int
    alternative: str
    confidence_level: float
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "BootstrapResult":
        missing = [f for f in cls.__dataclass_fields__ if f not in obj]
        if missing:
            raise ValueError(f"BootstrapResult: missing field(s) {missing}")
        return cls(**{f: obj[f] for f in cls.__dataclass_fields__})


def per_item_values(values: Any, name: str) -> np.ndarray:
    """``[I]`` or ``[R, I]`` (R runs, e.g. random seeds: averaged per item) -> float64 ``[I]``."""
    arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name}: expected numbers (per-item correctness or scores), got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim == 2:
        if arr.shape[0] == 0:
            raise ValueError(f"{name}: no runs (shape {arr.shape})")
        arr = arr.mean(axis=0)
    elif arr.ndim != 1:
        raise ValueError(f"{name}: expected shape [items] or [runs, items], got {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: no items")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{name}: item {int(bad[0])} is not finite ({arr[bad[0]]})")
    return arr


def resampled_sums(d: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """``float64 [R]``: the sums of ``d`` (``[I]``) over R resamples of its items with replacement, drawn from
    numpy's ``default_rng(seed)`` (the draws of ``paired_bootstrap`` and ``power.minimum_detectable_drop``)."""
    n = d.size
    rng = np.random.default_rng(seed)
    sums = np.empty(n_resamples, dtype=np.float64)
    chunk = max(1, _CHUNK // n)
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        sums[start : start + k] = d[rng.integers(0, n, size=(k, n))].sum(axis=1)
    return sums


def paired_bootstrap(
    correct_a: Any,
    correct_b: Any,
    n_resamples: int = 10000,
    seed: int = 0,
    alternative: str = "less",
    confidence_level: float = 0.95,
) -> BootstrapResult:
    """Paired bootstrap over items of ``mean(a) - mean(b)``.

    Args:
        correct_a: per-item outcomes under condition A (e.g. our neurons inhibited): bool/0-1 or any scores,
            shape ``[I]``, or ``[R, I]`` for R runs (averaged per item).
        correct_b: the same for condition B (e.g. ``[R, I]`` for R random sets), same items in the same order.
        n_resamples: bootstrap resamples R.
        seed: seed of numpy's ``default_rng``; the same inputs and seed give the same result.
        alternative: ``"less"`` (H1: A is lower than B), ``"greater"``, or ``"two-sided"``.
        confidence_level: of the percentile interval.

    Returns:
        ``BootstrapResult(diff, ci_low, ci_high, p_value, ...)``.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    a, b = per_item_values(correct_a, "correct_a"), per_item_values(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"correct_a has {a.size} items but correct_b has {b.size}; both must cover the same items")
    d = a - b
    n = d.size
    total = float(d.sum())
    sums = resampled_sums(d, n_resamples, seed)
    # Compare sums, not means: with 0/1 outcomes they are exact integers, so ties are decided exactly; the small
    # tolerance counts float near-ties of non-integer scores as ties (the conservative side).
    tol = 1e-9 * max(1.0, float(np.abs(d).sum()))
    if alternative == "less":  # d*/n - d/n <= d/n
        extreme = sums <= 2.0 * total + tol
    elif alternative == "greater":
        extreme = sums >= 2.0 * total - tol
    else:
        extreme = np.abs(sums - total) >= abs(total) - tol
    p_value = (1.0 + float(extreme.sum())) / (1.0 + n_resamples)
    tail = (1.0 - confidence_level) / 2.0
    low, high = np.quantile(sums / n, [tail, 1.0 - tail])
    return BootstrapResult(
        diff=total / n,
        ci_low=float(low),
        ci_high=float(high),
        p_value=min(1.0, p_value),
        n_items=int(n),
        n_resamples=int(n_resamples),
        alternative=alternative,
        confidence_level=float(confidence_level),
        seed=int(seed),
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, family-wise error): with the p-values sorted ascending,
    ``adj_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j))``, returned in the input order. A hypothesis is rejected at
    level alpha exactly when its adjusted p-value is below alpha (the same decisions as ``significant(...,
    correction="holm")``). Written out (six lines) rather than adding statsmodels for ``multipletests``.
    """
    p = [float(x) for x in pvalues]
    for i, x in enumerate(p):
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"holm: p-value {i} is {x}, not a probability")
    m = len(p)
    out = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _p(result: Any) -> float:
    if isinstance(result, BootstrapResult):
        return result.p_value
    if isinstance(result, (int, float, np.floating)) and not isinstance(result, bool):
        return float(result)
    raise TypeError(f"expected a BootstrapResult or a p-value, got {type(result).__name__}")


def _reject(pvalues: list[float], alpha: float, correction: str) -> list[bool]:
    m = len(pvalues)
    if correction == "none":
        return [p < alpha for p in pvalues]
    if correction == "bonferroni":
        return [p < alpha / m for p in pvalues]
    # Holm step-down (reject the smallest p-values while p_(i) < alpha / (m - i), stop at the first failure),
    # decided on the adjusted p-values: comparing p < alpha / k instead of k * p < alpha differs by rounding
    # (e.g. p = 0.05 / 19), and the decisions must be those of holm()'s p-values, which the report shows.
    return [adjusted < alpha for adjusted in holm(pvalues)]


def significant(
    results: BootstrapResult | float | Mapping[str, Any] | Sequence[Any],
    alpha: float = 0.05,
    correction: str = "none",
) -> bool | dict[str, bool] | list[bool]:
    """Whether each result's p-value is below ``alpha``.

    Args:
        results: one ``BootstrapResult`` (or p-value) -> bool; a ``{name: result}`` mapping -> ``{name: bool}``;
            a sequence -> ``[bool]``.
        alpha: significance level.
        correction: ``"none"``, ``"bonferroni"`` or ``"holm"`` (family-wise error over the results given together).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if correction not in ("none", "bonferroni", "holm"):
        raise ValueError(f"correction must be 'none', 'bonferroni' or 'holm', got {correction!r}")
    if isinstance(results, Mapping):
        keys = list(results)
        return dict(zip(keys, _reject([_p(results[k]) for k in keys], alpha, correction)))
    if isinstance(results, (list, tuple)):
        return _reject([_p(r) for r in results], alpha, correction)
    return _reject([_p(results)], alpha, correction)[0]
