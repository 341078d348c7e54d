"""paired_bootstrap / significant against hand computations and exact enumeration."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from culnig_ext.stats.bootstrap import BootstrapResult, paired_bootstrap, significant


def _exact_bootstrap_p(a, b, alternative):
    """Enumerate all n^n equally likely resamples; the null-shifted p-value without the +1 correction."""
    d = [x - y for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    hits = 0
    for idx in itertools.product(range(n), repeat=n):
        shifted = sum(d[i] for i in idx) / n - mean
        if alternative == "less":
            hits += shifted <= mean + 1e-12
        else:
            hits += abs(shifted) >= abs(mean) - 1e-12
    return hits / n**n


@pytest.mark.parametrize("alternative, hand", [("less", 1 / 16), ("two-sided", 1 / 8)])
def test_p_value_matches_exact_enumeration(alternative, hand):
    a, b = [0, 0, 1, 0], [1, 1, 1, 0]
    # d = [-1, -1, 0, 0], mean -1/2. less: every pick among the two -1 items -> (1/2)^4;
    # two-sided adds "no pick among them" -> 2 * (1/2)^4.
    exact = _exact_bootstrap_p(a, b, alternative)
    assert exact == pytest.approx(hand, abs=1e-15)
    n = 100_000
    res = paired_bootstrap(a, b, n_resamples=n, seed=1, alternative=alternative)
    assert res.diff == -0.5
    se = math.sqrt(exact * (1 - exact) / n)
    assert abs(res.p_value - exact) < 5 * se + 1 / n


def test_clearly_worse_condition_is_significant():
    rng = np.random.default_rng(0)
    a = rng.random(200) < 0.3
    b = rng.random(200) < 0.8
    res = paired_bootstrap(a, b, n_resamples=5000, seed=0)
    assert res.diff == pytest.approx(a.mean() - b.mean())
    assert res.p_value == pytest.approx(1 / 5001)  # no resample reaches the observed gap
    assert res.ci_high < 0
    assert significant(res)
    # the other direction is not significant at all
    assert paired_bootstrap(b, a, n_resamples=5000, seed=0).p_value > 0.99


def test_identical_conditions_give_p_one():
    a = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1], dtype=bool)
    res = paired_bootstrap(a, a.copy(), n_resamples=2000)
    assert res.diff == 0.0 and res.ci_low == 0.0 and res.ci_high == 0.0
    assert res.p_value == 1.0
    assert not significant(res)


def test_same_marginals_different_items_is_not_significant():
    # Both 50% correct, on different items: no evidence that A is lower.
    a = [1, 0] * 20
    b = [0, 1] * 20
    res = paired_bootstrap(a, b, n_resamples=4000, seed=3)
    assert res.diff == 0.0
    assert res.p_value > 0.3


def test_ci_matches_normal_approximation_on_many_items():
    rng = np.random.default_rng(7)
    a = (rng.random(2000) < 0.55).astype(float)
    b = (rng.random(2000) < 0.60).astype(float)
    d = a - b
    half = 1.959964 * d.std() / math.sqrt(d.size)
    res = paired_bootstrap(a, b, n_resamples=4000, seed=0, alternative="two-sided")
    assert res.ci_low == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert res.ci_high == pytest.approx(d.mean() + half, abs=0.15 * half)


def test_runs_are_averaged_per_item_and_seed_is_reproducible():
    rng = np.random.default_rng(1)
    a = rng.random(50) < 0.4
    b_runs = rng.random((5, 50)) < 0.6
    r1 = paired_bootstrap(a, b_runs, n_resamples=3000, seed=11)
    r2 = paired_bootstrap(a, b_runs.mean(axis=0), n_resamples=3000, seed=11)
    assert r1 == r2
    assert r1.diff == pytest.approx(a.mean() - b_runs.mean())
    r3 = paired_bootstrap(a, b_runs, n_resamples=3000, seed=12)
    assert r3.diff == r1.diff and r3 != r1
    assert BootstrapResult.from_dict(r1.to_dict()) == r1


def test_bad_inputs():
    with pytest.raises(ValueError, match="same items"):
        paired_bootstrap([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="alternative"):
        paired_bootstrap([1], [0], alternative="lower")
    with pytest.raises(ValueError, match="correct_b: item 1 is not finite"):
        paired_bootstrap([1, 0], [1, float("nan")])
    with pytest.raises(ValueError, match="correct_a: no items"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap([1], [0], n_resamples=0)


def test_significant_corrections_by_hand():
    ps = {"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.2}
    assert significant(ps, 0.05) == {"a": True, "b": True, "c": True, "d": False}
    # Bonferroni: alpha / 4 = 0.0125
    assert significant(ps, 0.05, correction="bonferroni") == {"a": True, "b": False, "c": False, "d": False}
    # Holm: 0.01 < 0.05/4 yes; 0.03 < 0.05/3 = 0.0167 no -> stop
    assert significant(ps, 0.05, correction="holm") == {"a": True, "b": False, "c": False, "d": False}
    assert significant([0.001, 0.02], 0.05, correction="holm") == [True, True]  # 0.001 < .025, 0.02 < .05
    assert significant(0.049) is True and significant(0.05) is False


def test_holm_adjusted_p_values_by_hand():
    from culnig_ext.stats.bootstrap import holm

    # sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.5 (x1 = 0.5); in input order:
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    # monotone step-down: a later raw product below an earlier one is raised to it (0.04 * 2 = 0.08 < 0.09)
    assert holm([0.03, 0.04]) == pytest.approx([0.06, 0.06])
    assert holm([0.03, 0.045, 0.9]) == pytest.approx([0.09, 0.09, 0.9])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []
    # the same decisions as the step-down test in significant(..., correction="holm")
    ps = [0.001, 0.013, 0.02, 0.04, 0.3]
    # 0.001 x 5 = 0.005 < 0.05; 0.013 x 4 = 0.052: stop
    assert [p < 0.05 for p in holm(ps)] == significant(ps, correction="holm") == [True, False, False, False, False]
    with pytest.raises(ValueError, match="p-value 1 is 1.5"):
        holm([0.1, 1.5])
