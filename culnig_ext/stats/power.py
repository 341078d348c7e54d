"""Power of the paired bootstrap: the smallest accuracy drop (ours - random) a test could detect.

``stats.paired_bootstrap(a, b, alternative="less")`` rejects at level alpha when the observed difference
``d = mean(a - b)`` lies at or below the alpha-quantile of the centred bootstrap distribution ``e = d* - d``
(``p = (1 + #{e_r <= d}) / (1 + R)``). Under a *shift alternative* (the same item-level spread, the mean moved to
``-delta``) the observed difference is ``-delta + e``, so the test rejects with probability
``P(e <= q_alpha(e) + delta)``. Power ``1 - beta`` is therefore reached at

    delta = q_{1-beta}(e) - q_alpha(e)

which this module returns, computed from the same resamples (same seed) as the p-value beside it. For a large
number of items it tends to ``(z_{1-alpha} + z_{1-beta}) * sd(a - b) / sqrt(n)`` (about ``2.49 * se`` for
alpha = 0.05, 80% power), the textbook minimum detectable effect of a one-sided z-test.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from culnig_ext.stats.bootstrap import per_item_values, resampled_sums


def minimum_detectable_drop(
    correct_a: Any,
    correct_b: Any,
    *,
    power: float = 0.8,
    alpha: float = 0.05,
    n_resamples: int = 10000,
    seed: int = 0,
) -> float:
    """The smallest drop ``mean(b) - mean(a)`` (>= 0, in the units of the outcomes: a share for 0/1 accuracy)
    that the one-sided paired bootstrap at level ``alpha`` detects with probability ``power``.

    Args:
        correct_a, correct_b: per-item outcomes as for ``stats.paired_bootstrap`` (``[I]`` or ``[R, I]``).
        power: the wanted power, in (alpha, 1).
        alpha: the test's level.
        n_resamples, seed: the bootstrap's resamples and seed (use the p-value's to share its draws).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not alpha < power < 1.0:
        raise ValueError(f"power must be in (alpha, 1) = ({alpha}, 1), got {power}")
    a, b = per_item_values(correct_a, "correct_a"), per_item_values(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"correct_a has {a.size} items but correct_b has {b.size}; both must cover the same items")
    d = a - b
    e = (resampled_sums(d, n_resamples, seed) - float(d.sum())) / d.size
    high, low = np.quantile(e, [power, alpha])
    return float(max(0.0, high - low))
