"""Edges of the significance helpers that a mutation run found unguarded: thresholds exactly on the boundary,
Holm's order, inputs that are not numbers, tensors that require grad. Expectations are worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from culnig_ext.stats.bootstrap import BootstrapResult, paired_bootstrap, significant


def test_holm_sorts_by_p_value_and_differs_from_bonferroni():
    # m = 3, alpha = 0.05. Bonferroni: p < 0.0167 -> only 0.012. Holm: 0.012 < 0.0167, 0.02 < 0.025, 0.3 >= 0.05.
    ps = [0.3, 0.02, 0.012]  # not in p order: Holm must sort
    assert significant(ps, 0.05, correction="bonferroni") == [False, False, True]
    assert significant(ps, 0.05, correction="holm") == [False, True, True]
    assert significant(ps, 0.05, correction="none") == [False, True, True]
    assert significant(tuple(ps), 0.05, correction="bonferroni") == [False, False, True]
    assert significant({"x": 0.3, "y": 0.02, "z": 0.012}, correction="bonferroni") == {
        "x": False, "y": False, "z": True}
    # none vs Holm on a list: 0.03 passes uncorrected; Holm stops at it (0.03 >= 0.05 / 2)
    assert significant([0.03, 0.04], 0.05, correction="none") == [True, True]
    assert significant([0.03, 0.04], 0.05, correction="holm") == [False, False]


def test_thresholds_are_strict():
    # p exactly at alpha / m is not significant under either correction (0.05 / 2 is exactly 0.025 in binary).
    assert significant([0.025, 0.9], 0.05, correction="bonferroni") == [False, False]
    assert significant([0.025, 0.9], 0.05, correction="holm") == [False, False]
    assert significant([0.0249, 0.05], 0.05, correction="holm") == [True, False]  # second step: 0.05 < 0.05 fails
    assert significant([0.0249, 0.0499], 0.05, correction="holm") == [True, True]
    assert significant(0.05, 0.05) is False and significant(0.0499, 0.05) is True


def test_bad_alpha_correction_and_result_types_are_refused():
    for alpha in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            significant(0.01, alpha)
    with pytest.raises(ValueError, match="correction"):
        significant([0.01], correction="sidak")
    for bad in (True, "0.01", None):
        with pytest.raises(TypeError):
            significant(bad)
    assert significant(np.float64(0.01)) is True and significant(1) is False


def test_a_bootstrap_result_counts_by_its_p_value():
    res = paired_bootstrap([0, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1], n_resamples=99)
    # d = -1 on every item: every resample sums to -8, never <= 2 * (-8) = -16, so p = (1 + 0) / (1 + 99)
    assert res.p_value == pytest.approx(0.01)
    assert significant(res, 0.05) is True and significant(res, 0.01) is False
    assert significant({"r": res}) == {"r": True}


def test_from_dict_refuses_missing_fields_naming_them():
    res = paired_bootstrap([1, 0, 1], [0, 0, 1], n_resamples=50, seed=3)
    assert BootstrapResult.from_dict(res.to_dict()) == res
    obj = res.to_dict()
    del obj["p_value"]
    with pytest.raises(ValueError, match="p_value"):
        BootstrapResult.from_dict(obj)
    with pytest.raises(ValueError, match="diff"):
        BootstrapResult.from_dict({k: v for k, v in res.to_dict().items() if k != "diff"})


def test_inputs_tensors_that_require_grad_and_non_numbers():
    a = torch.tensor([1.0, 0.0, 1.0, 1.0], requires_grad=True)
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0]], requires_grad=True)
    got = paired_bootstrap(a, b, n_resamples=200, seed=1)
    want = paired_bootstrap([1, 0, 1, 1], [[0, 0, 1, 1], [1, 0, 0, 1]], n_resamples=200, seed=1)
    assert got == want
    assert got.diff == 0.25  # d = [1, 0, 1, 1] - [0.5, 0, 0.5, 1] (runs averaged per item)
    with pytest.raises(ValueError, match="expected numbers"):
        paired_bootstrap(["1", "0"], [0, 1])
    with pytest.raises(ValueError, match="expected numbers"):
        paired_bootstrap([1, 0], np.array([object(), object()]))
    # booleans are outcomes too
    assert paired_bootstrap(np.array([True, False]), np.array([False, False]), n_resamples=10).diff == 0.5


def test_runs_shape_edges():
    one_run = paired_bootstrap([1, 0, 1], [[0, 0, 1]], n_resamples=100, seed=2)
    assert one_run == paired_bootstrap([1, 0, 1], [0, 0, 1], n_resamples=100, seed=2)
    with pytest.raises(ValueError, match="correct_b: no runs"):
        paired_bootstrap([1, 0, 1], np.zeros((0, 3)))
    with pytest.raises(ValueError, match="correct_a: no items"):  # two runs of no items: not "no runs"
        paired_bootstrap(np.zeros((2, 0)), np.zeros((2, 0)))
    with pytest.raises(ValueError, match=r"shape \[items\] or \[runs, items\]"):
        paired_bootstrap([1, 0], np.zeros((1, 1, 2)))


def documented_rule(a, b, n_resamples, seed, confidence_level=0.95, alternative="less"):
    """p and the percentile interval, written out from the module docstring."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64).reshape(-1, len(a)).mean(axis=0)
    n = d.size
    sums = d[np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))].sum(axis=1)
    tol = 1e-9 * max(1.0, np.abs(d).sum())
    t = d.sum()
    extreme = {"less": sums <= 2 * t + tol, "greater": sums >= 2 * t - tol,
               "two-sided": np.abs(sums - t) >= abs(t) - tol}[alternative]
    p = (1 + int(extreme.sum())) / (1 + n_resamples)
    tail = (1 - confidence_level) / 2
    low, high = np.quantile(sums / n, [tail, 1 - tail])
    return min(1.0, p), float(low), float(high)


@pytest.mark.parametrize("alternative", ["less", "greater", "two-sided"])
@pytest.mark.parametrize("a, b", [
    ([1, 0, 0, 1, 0, 1, 1], [[1, 1, 0, 1, 1, 0, 1], [0, 1, 1, 1, 0, 0, 1]]),  # 0/1 outcomes: many exact ties
    ([0, 1, 1, 0, 1, 1, 0], [1, 1, 0, 0, 1, 1, 0]),
    ([0.5, 0.75e-9], [0.0, 0.0]),  # resample (0.5, 0.5) is 1.5e-9 from the tie: outside the tolerance 1e-9 * 1
    ([2.0, 0.75e-9], [0.0, 0.0]),  # ... and (2, 2) is inside the tolerance 1e-9 * 2
])
def test_every_alternative_equals_the_documented_rule(alternative, a, b):
    got = paired_bootstrap(a, b, n_resamples=200, seed=9, alternative=alternative)
    p, low, high = documented_rule(a, b, 200, 9, alternative=alternative)
    assert (got.p_value, got.ci_low, got.ci_high) == (p, low, high)
    assert got.n_items == len(a) and got.alternative == alternative


@pytest.mark.parametrize("n_resamples", [1, 7, 50])
def test_chunked_resampling_equals_the_documented_rule(monkeypatch, n_resamples):
    import culnig_ext.stats.bootstrap as stats

    a = [1, 0, 0, 1, 0]
    b = [[1, 1, 0, 1, 1], [0, 1, 1, 1, 0]]
    monkeypatch.setattr(stats, "_CHUNK", 10)  # chunks of 2 resamples of 5 items: the last one is short
    got = paired_bootstrap(a, b, n_resamples=n_resamples, seed=4)
    p, low, high = documented_rule(a, b, n_resamples, 4)
    assert (got.p_value, got.ci_low, got.ci_high) == (p, low, high)
    assert got.n_resamples == n_resamples


def test_defaults_and_confidence_level_bounds():
    a, b = [1, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]
    res = paired_bootstrap(a, b)
    assert (res.n_resamples, res.seed, res.alternative, res.confidence_level) == (10000, 0, "less", 0.95)
    assert res == paired_bootstrap(a, b, n_resamples=10000, seed=0, alternative="less", confidence_level=0.95)
    p, low, high = documented_rule(a, b, 10000, 0)
    assert (res.p_value, res.ci_low, res.ci_high) == (p, low, high)
    for level in (0.0, 1.0, 1.5, -0.5):
        with pytest.raises(ValueError, match="confidence_level"):
            paired_bootstrap(a, b, confidence_level=level)
    assert paired_bootstrap(a, b, confidence_level=0.5).ci_high <= res.ci_high


def test_holm_accepts_the_bounds_of_a_probability():
    from culnig_ext.stats.bootstrap import holm

    # by hand: sorted 0.0, 0.25, 1.0 -> 3 * 0.0, max(0, 2 * 0.25), max(0.5, min(1, 1 * 1.0))
    assert holm([0.0, 1.0, 0.25]) == [0.0, 1.0, 0.5]
    with pytest.raises(ValueError, match="p-value 1 is 1.5"):
        holm([0.2, 1.5])
