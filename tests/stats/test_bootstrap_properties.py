"""Property tests (hypothesis) of ``culnig_ext.stats.bootstrap``: Holm's adjusted p-values against a textbook
implementation and their invariants, the Holm decisions of ``significant`` against the adjusted p-values, and the
bootstrap p-value's range, mirror symmetries and its definition (module docstring) counted here in plain Python."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from culnig_ext.stats.bootstrap import holm, paired_bootstrap, significant

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)

# p-values with ties and the edges 0 and 1, plus p-values on the boundary alpha / k and one float step off it
_edges = [float(np.nextafter(a / k, d)) for a in (0.05, 0.1) for k in (2, 3, 19, 29, 38) for d in (0.0, a, 1.0)]
pvalues = st.lists(st.one_of(st.sampled_from([0.0, 0.01, 0.02, 0.025, 0.05, 0.5, 1.0] + _edges),
                             st.floats(0.0, 1.0, allow_nan=False)), max_size=40)


def textbook_holm(p: list[float]) -> list[float]:
    """adj_(i) = min(1, max_{j <= i} (m - j + 1) p_(j)) over the p-values sorted ascending (1-based j)."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adj = [0.0] * m
    for pos, i in enumerate(order):
        adj[i] = min(1.0, max((m - j) * p[order[j]] for j in range(pos + 1)))
    return adj


@SETTINGS
@given(pvalues)
def test_holm_is_textbook_holm_and_monotone(p):
    adj = holm(p)
    assert adj == textbook_holm(p)
    for i in range(len(p)):
        assert p[i] <= adj[i] <= 1.0
        for j in range(len(p)):
            if p[i] <= p[j]:
                assert adj[i] <= adj[j]  # monotone in the raw order (equal raw p-values: equal adjusted)
    # permuting the hypotheses permutes the adjusted p-values
    rev = holm(p[::-1])
    assert rev == adj[::-1]


@SETTINGS
@given(pvalues.filter(len), st.sampled_from([0.01, 0.05, 0.1]))
# 0.05 / 19 rounds so that 19 * p < 0.05 although p is not < 0.05 / 19: the step-down test compared p < alpha / k,
# the adjusted p-value k * p < alpha; the two disagreed (now both read the adjusted p-values).
@example([0.05 / 19] + [0.9] * 18, 0.05)
@example([0.05 / 29] + [0.9] * 28, 0.05)
def test_significant_holm_rejects_exactly_when_adjusted_below_alpha(p, alpha):
    assert significant(p, alpha, correction="holm") == [a < alpha for a in holm(p)]


# --------------------------------------------------------------------------------------------- bootstrap
@st.composite
def paired(draw, max_items=25):
    n = draw(st.integers(1, max_items))
    a = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    b = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    return np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)


R = 199


@SETTINGS
@given(paired(), st.integers(0, 2**31), st.sampled_from(["less", "greater", "two-sided"]))
def test_bootstrap_p_is_the_documented_count(ab, seed, alternative):
    """p = (1 + #{r: d*_r - d is as extreme as d}) / (1 + R), d* the resampled mean difference, counted here with
    integer sums (0/1 outcomes: exact), over the documented draw ``default_rng(seed).integers(0, n, (R, n))``."""
    a, b = ab
    res = paired_bootstrap(a, b, n_resamples=R, seed=seed, alternative=alternative)
    d = [int(x) for x in a - b]
    n, total = len(d), sum(d)
    idx = np.random.default_rng(seed).integers(0, n, size=(R, n))
    star = [sum(d[j] for j in row) for row in idx.tolist()]  # n * d*_r
    if alternative == "less":
        hits = sum(s - total <= total for s in star)
    elif alternative == "greater":
        hits = sum(s - total >= total for s in star)
    else:
        hits = sum(abs(s - total) >= abs(total) for s in star)
    assert res.p_value == pytest.approx((1 + hits) / (1 + R), abs=1e-15)
    assert res.diff == pytest.approx(total / n, abs=1e-15)
    # the 95% percentile interval of the same resampled mean differences, taken here from the hand-counted sums
    low, high = np.quantile(np.array(star, dtype=float) / n, [0.025, 0.975])
    assert (res.ci_low, res.ci_high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))


@SETTINGS
@given(st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.lists(st.floats(-3, 3, allow_nan=False), min_size=n, max_size=n),
    st.lists(st.floats(-3, 3, allow_nan=False), min_size=n, max_size=n))), st.integers(0, 1000))
def test_bootstrap_mirror_symmetries(ab, seed):
    """Swapping the conditions mirrors everything: less <-> greater, two-sided unchanged, the interval negated;
    and the one-sided p-values cover every resample between them; two-sided is at least the one-sided p-value of
    the observed direction."""
    a, b = (np.array(x) for x in ab)
    run = lambda x, y, alt: paired_bootstrap(x, y, n_resamples=R, seed=seed, alternative=alt)  # noqa: E731
    less, greater, two = run(a, b, "less"), run(a, b, "greater"), run(a, b, "two-sided")
    assert run(b, a, "greater").p_value == less.p_value
    assert run(b, a, "less").p_value == greater.p_value
    swapped = run(b, a, "two-sided")
    assert swapped.p_value == two.p_value
    assert swapped.diff == pytest.approx(-two.diff, abs=1e-12)
    assert swapped.ci_low == pytest.approx(-two.ci_high, abs=1e-9)
    assert swapped.ci_high == pytest.approx(-two.ci_low, abs=1e-9)
    # every resample is <= or >= the observed one: p_less + p_greater >= (2 + R) / (1 + R)
    assert (less.p_value + greater.p_value) * (1 + R) >= 2 + R - 1e-9
    if two.diff <= 0:
        assert two.p_value >= less.p_value
    if two.diff >= 0:
        assert two.p_value >= greater.p_value


@SETTINGS
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=30), st.integers(0, 1000),
       st.sampled_from(["less", "greater", "two-sided"]))
def test_bootstrap_identical_conditions_p_one(a, seed, alternative):
    res = paired_bootstrap(a, list(a), n_resamples=R, seed=seed, alternative=alternative)
    assert res.p_value == 1.0 and res.diff == 0.0 and res.ci_low == res.ci_high == 0.0
