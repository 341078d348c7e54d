"""stats.rows.accuracy_row against a paired bootstrap and an MDE written out here from their definitions."""
from __future__ import annotations

import numpy as np
import pytest

from culnig_ext.intervention.evaluate import EvalResult, ItemRecord
from culnig_ext.stats.rows import accuracy_row


def _eval(correct, ids=None) -> EvalResult:
    ids = ids or [f"i{k}" for k in range(len(correct))]
    return EvalResult([ItemRecord(i, "G", 0, 0 if c else 1, bool(c), [0.0, -1.0]) for i, c in zip(ids, correct)],
                      format="letter")


def _reference(a: np.ndarray, randoms: np.ndarray, n_resamples: int, seed: int):
    """The row's statistics by their definitions: d = a - mean over random sets per item; R resamples of the items
    with replacement from numpy's default_rng(seed); one-sided p = (1 + #{d* - d <= d}) / (1 + R); the 95%
    percentile interval of d*; the MDE q_0.8(e) - q_0.05(e) of e = d* - d (80% power, alpha 0.05)."""
    d = a.astype(float) - randoms.astype(float).mean(axis=0)
    n = d.size
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    star = d[idx].sum(axis=1) / n
    p = (1 + np.count_nonzero(star - d.mean() <= d.mean() + 1e-12)) / (1 + n_resamples)
    low, high = np.quantile(star, [0.025, 0.975])
    e = star - d.mean()
    hi, lo = np.quantile(e, [0.8, 0.05])
    return min(1.0, p), low, high, max(0.0, hi - lo)


@pytest.mark.parametrize("seed,n_resamples", [(0, 10000), (7, 600)])
def test_the_row_holds_the_bootstrap_interval_p_and_mde_of_its_seed(seed, n_resamples):
    rng = np.random.default_rng(3)
    n = 60
    original = rng.random(n) < 0.7
    inhibited = rng.random(n) < 0.45
    randoms = rng.random((3, n)) < 0.6
    kwargs = {} if (seed, n_resamples) == (0, 10000) else {"seed": seed, "n_resamples": n_resamples}  # the defaults
    row = accuracy_row("Cultural", _eval(original), _eval(inhibited), [_eval(r) for r in randoms], **kwargs)
    p, low, high, mde = _reference(inhibited, randoms, n_resamples, seed)
    assert row.eval_set == "Cultural" and row.cultural is True and row.metric == "accuracy"
    assert row.original == original.mean() and row.inhibited == inhibited.mean()
    assert row.random == [float(r.mean()) for r in randoms]
    assert row.p_value == pytest.approx(p, abs=1e-12)
    assert (row.diff_low, row.diff_high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert row.mde == pytest.approx(mde, abs=1e-12) and row.mde > 0
    assert row.diff == pytest.approx(inhibited.mean() - randoms.mean(axis=1).mean())


def test_the_p_value_is_one_sided_inhibited_lower():
    # Inhibited *above* random on every item: the one-sided test (H1: lower) gives p = 1, a two-sided one ~0.
    n = 30
    row = accuracy_row("X", _eval([True] * n), _eval([True] * n), [_eval([False] * 20 + [True] * 10)], n_resamples=500)
    assert row.p_value == 1.0


def test_a_row_without_random_sets_has_no_statistics_and_keeps_its_tags():
    row = accuracy_row("General", _eval([True, False, True, True]), _eval([False, False, True, True]), [],
                       cultural=False)
    assert (row.original, row.inhibited, row.random, row.n_items) == (0.75, 0.5, [], 4)
    assert (row.p_value, row.diff_low, row.diff_high, row.mde) == (None, None, None, None)
    assert row.cultural is False and row.eval_set == "General"


def test_items_out_of_line_are_named_by_condition():
    ok = _eval([True, False])
    other = _eval([True, False], ids=["a", "b"])
    with pytest.raises(ValueError, match=r"accuracy_row\('S'\): inhibited is not on the same items"):
        accuracy_row("S", ok, other, [ok])
    with pytest.raises(ValueError, match=r"randoms\[1\] is not on the same items"):
        accuracy_row("S", ok, ok, [ok, other])
    with pytest.raises(ValueError, match="metric must be 'accuracy' or 'acc_norm', got 'f1'"):
        accuracy_row("S", ok, ok, [ok], metric="f1")
