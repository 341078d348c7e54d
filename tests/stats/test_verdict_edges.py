"""The verdict at its edges: the bootstrap intervals against the binomial distribution they resample, the
"undefined" rules (too few finite resamples), the defaults and the JSON form written out by hand, and the errors
that name the set or the key."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.stats import binom

from culnig_ext.stats.verdict import (
    CULTURE_SPECIFIC,
    INCONCLUSIVE,
    Interval,
    SetOutcome,
    Verdict,
    decide,
    from_results,
    specificity,
)


def ones(n_correct: int, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=float)
    out[:n_correct] = 1.0
    return out


def as_tuple(x: Interval | None):
    return None if x is None else (x.value, x.low, x.high)


# One set of n = 1000 items, 500 of them "varying": resampling the items draws X ~ Binomial(1000, 1/2) of them, so
# D = (random - ours) / original is a function of X alone and its percentile interval is that function at X's
# quantiles (scipy's binom.ppf).
N, M = 1000, 500


@pytest.mark.parametrize("level", [0.95, 0.5])
@pytest.mark.parametrize("varies", ["ours", "randoms", "original"])
def test_interval_is_the_binomial_percentile_interval(varies, level):
    full, half, none = np.ones(N), ones(M, N), np.zeros(N)
    if varies == "ours":        # D = 1 - X / N, decreasing in X
        orig, ours, rand = full, half, full
        f, decreasing = (lambda x: 1 - x / N), True
    elif varies == "randoms":   # D = X / N
        orig, ours, rand = full, none, half
        f, decreasing = (lambda x: x / N), False
    else:                       # D = 1 / (X / N): every item is right under the random sets, half originally
        orig, ours, rand = half, none, full
        f, decreasing = (lambda x: N / x), True
    v = specificity([SetOutcome("S", True, orig, ours, rand[None, :])], confidence_level=level)
    tail = (1 - level) / 2
    q_lo, q_hi = binom.ppf(tail, N, M / N), binom.ppf(1 - tail, N, M / N)
    want_lo, want_hi = (f(q_hi), f(q_lo)) if decreasing else (f(q_lo), f(q_hi))
    # the resampled quantile is within 1.5 draws of X's exact quantile (10,000 resamples, interpolated)
    slack_lo, slack_hi = abs(f(q_hi if decreasing else q_lo) - f((q_hi if decreasing else q_lo) + 1.5)), \
        abs(f(q_lo if decreasing else q_hi) - f((q_lo if decreasing else q_hi) + 1.5))
    got = v.per_set["S"]
    assert got.value == pytest.approx(f(M))
    assert got.low == pytest.approx(want_lo, abs=slack_lo)
    assert got.high == pytest.approx(want_hi, abs=slack_hi)
    assert as_tuple(v.cultural) == as_tuple(got)  # one cultural set: the pooled drop is that set's
    assert v.n_resamples == 10000 and v.confidence_level == level


def test_every_item_can_be_drawn():
    # 5 items, ours wrong on item 0 only: D* = (draws of item 0) / 5 ~ Binomial(5, 1/5) / 5, whose 2.5% and 97.5%
    # quantiles are 0 and 3/5 (P(X <= 2) = 0.942, P(X <= 3) = 0.993)
    ours = np.ones(5)
    ours[0] = 0.0
    v = specificity([SetOutcome("S", True, np.ones(5), ours, np.ones((2, 5)))], n_resamples=2000)
    assert as_tuple(v.per_set["S"]) == (pytest.approx(0.2), 0.0, pytest.approx(0.6))


def test_defaults_seed_and_resamples_are_recorded():
    sets = [SetOutcome("C", True, ones(30, 40), ones(10, 40), np.stack([ones(25, 40), ones(30, 40)])),
            SetOutcome("G", False, ones(30, 40), ones(28, 40), np.stack([ones(30, 40)] * 2))]
    a, b = specificity(sets), specificity(sets, seed=0)
    assert a.n_resamples == 10000 and a.confidence_level == 0.95
    assert a.to_dict() == b.to_dict()  # the default seed is 0
    other = specificity(sets, seed=1)
    assert as_tuple(other.gap) != as_tuple(a.gap) and other.gap.value == a.gap.value
    c = specificity(sets, n_resamples=2000, confidence_level=0.9)
    assert c.n_resamples == 2000 and c.confidence_level == 0.9


def test_ratio_interval_of_sets_without_spread():
    # every item alike in each set: D_cult = (1 - 0.5) / 1 = 0.5 and D_non = (1 - 0.75) / 1 = 0.25 in every resample
    cult = SetOutcome("C", True, np.ones(20), np.full(20, 0.5), np.ones((3, 20)))
    non = SetOutcome("G", False, np.ones(20), np.full(20, 0.75), np.ones((3, 20)))
    v = specificity([cult, non], n_resamples=500)
    assert as_tuple(v.ratio) == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5))
    assert as_tuple(v.gap) == (pytest.approx(0.25), pytest.approx(0.25), pytest.approx(0.25))


def test_no_warnings_from_resamples_with_zero_accuracy_or_zero_drop():
    # C: items (original, ours, random) = (1, 0, 0), (0, 0, 1), (0, 0, 0): resamples without item 0 have original
    # accuracy 0 (x / 0 and 0 / 0); resamples of item 0 alone have a cultural drop of 0 (the ratio's x / 0, 0 / 0)
    cult = SetOutcome("C", True, np.array([1.0, 0, 0]), np.zeros(3), np.array([[0.0, 1, 0]]))
    non = SetOutcome("G", False, np.ones(2), np.zeros(2), np.array([[1.0, 0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v = specificity([cult, non], n_resamples=2000)
    assert v.per_set["C"].value == pytest.approx(1.0) and v.ratio.value == pytest.approx(0.5)


def test_a_drop_defined_in_under_half_the_resamples_is_undefined():
    # two cultural sets with 1 of 10 items right: a resample keeps it with chance 1 - 0.9^10 = 0.65 per set, both
    # sets 0.42 < 1/2, so the pooled cultural drop (1 in each set) has no interval; each set's own drop has one
    cult = [SetOutcome(n, True, ones(1, 10), np.zeros(10), ones(1, 10)[None, :]) for n in ("C1", "C2")]
    non = SetOutcome("G", False, np.ones(10), np.zeros(10), np.ones((1, 10)))
    v = specificity([*cult, non], n_resamples=2000)
    assert v.cultural is None and v.label == INCONCLUSIVE
    assert v.reason == "the cultural relative drop is undefined (too few resamples with accuracy above 0)"
    assert v.per_set["C1"].value == 1.0 and v.per_set["C1"].low == 1.0


def test_an_interval_needs_at_least_half_the_resamples_finite():
    # 2 items, 1 right originally, 2 resamples: a resample is finite with chance 3/4; "at least half finite" is
    # "not both infinite" (chance 1/16 of None), where "more than half" would give None with chance 7/16
    s = SetOutcome("S", True, np.array([1.0, 0.0]), np.zeros(2), np.array([[1.0, 1.0]]))
    nones = sum(specificity([s], n_resamples=2, seed=seed).per_set["S"] is None for seed in range(100))
    assert 1 <= nones <= 25  # 14 of these 100 seeds; about 44 under "more than half"


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.2])
def test_confidence_level_out_of_range(level):
    s = SetOutcome("S", True, np.ones(4), np.zeros(4), np.ones((1, 4)))
    with pytest.raises(ValueError, match="confidence_level must be in"):
        specificity([s], confidence_level=level)


def test_bad_outcomes_name_the_set_and_the_array():
    good = np.ones(4)
    with pytest.raises(ValueError, match=r"^BLEnD: randoms must be \[R >= 1, items\], got shape \(4,\)"):
        specificity([SetOutcome("BLEnD", True, good, good, good)])
    with pytest.raises(ValueError, match=r"^BLEnD: randoms must be \[R >= 1, items\], got shape \(0, 4\)"):
        specificity([SetOutcome("BLEnD", True, good, good, np.zeros((0, 4)))])
    bad = np.array([1.0, np.nan, 1.0, 0.0])
    for where, args in (("original", (bad, good, good[None])), ("ours", (good, bad, good[None])),
                        ("randoms", (good, good, bad[None]))):
        with pytest.raises(ValueError, match=rf"^BLEnD: {where}: item 1 is not finite"):
            specificity([SetOutcome("BLEnD", True, *args)])


def test_reasons_are_spelled_out():
    c, n, g = Interval(0.4, 0.2, 0.6), Interval(0.05, -0.1, 0.2), Interval(0.35, 0.1, 0.5)
    assert decide(c, n, g) == (CULTURE_SPECIFIC, "relative excess drop vs random neurons 40.0% [20.0%, 60.0%] on "
                               "the cultural sets, 5.0% [-10.0%, 20.0%] on the non-cultural set(s); the cultural "
                               "drop is significantly larger")
    assert decide(None, n, g) == (INCONCLUSIVE, "the cultural relative drop is undefined (too few resamples with "
                                                "accuracy above 0)")
    for non, gap in ((None, None), (n, None), (None, g)):
        assert decide(c, non, gap) == (INCONCLUSIVE, "no non-cultural set was evaluated, so specificity cannot be "
                                                     "judged")


def hand_verdict() -> Verdict:
    return Verdict("inconclusive", "why", Interval(0.1, -0.2, 0.3), None, None, Interval(0.05, -0.1, 0.2),
                   {"BLEnD": Interval(0.1, -0.2, 0.3), "Zero": None}, 0.9, 2000)


def test_to_dict_by_hand():
    assert hand_verdict().to_dict() == {
        "label": "inconclusive", "reason": "why", "cultural": {"value": 0.1, "low": -0.2, "high": 0.3},
        "non_cultural": None, "ratio": None, "gap": {"value": 0.05, "low": -0.1, "high": 0.2},
        "per_set": {"BLEnD": {"value": 0.1, "low": -0.2, "high": 0.3}, "Zero": None},
        "confidence_level": 0.9, "n_resamples": 2000}
    full = Verdict("culture-specific", "r", Interval(1, 0, 2), Interval(3, 2, 4), Interval(5, 4, 6),
                   Interval(7, 6, 8), {}, 0.95, 10)
    d = full.to_dict()
    assert (d["non_cultural"], d["ratio"]) == ({"value": 3, "low": 2, "high": 4}, {"value": 5, "low": 4, "high": 6})


def test_from_dict_reads_values_and_fills_defaults():
    v = Verdict.from_dict(hand_verdict().to_dict())
    assert (v.confidence_level, v.n_resamples, v.reason) == (0.9, 2000, "why")
    assert as_tuple(v.gap) == (0.05, -0.1, 0.2) and v.per_set["Zero"] is None
    minimal = Verdict.from_dict({"label": "not specific"})
    assert (minimal.reason, minimal.per_set, minimal.confidence_level, minimal.n_resamples) == ("", {}, 0.95, 10000)
    assert minimal.cultural is None and minimal.gap is None


@pytest.mark.parametrize("key", ["cultural", "non_cultural", "ratio", "gap", "per_set.BLEnD"])
def test_from_dict_errors_name_the_key(key):
    obj = {"label": "inconclusive"}
    if key.startswith("per_set."):
        obj["per_set"] = {"BLEnD": {"value": 0.1}}
    else:
        obj[key] = {"value": 0.1, "low": 0.0}
    with pytest.raises(ValueError, match=rf"^verdict\.{key}: expected \{{value, low, high\}}"):
        Verdict.from_dict(obj)
    with pytest.raises(ValueError, match=rf"^run\.json: verdict\.{key}: expected"):
        Verdict.from_dict(obj, where="run.json: verdict")


def test_from_dict_refuses_an_unknown_label():
    for obj in ({"label": "specific"}, {}, ["culture-specific"]):
        with pytest.raises(ValueError, match=r"^verdict\.label: expected one of"):
            Verdict.from_dict(obj)


def test_from_results_defaults():
    def res(n_correct, n):
        return SimpleNamespace(correct=ones(n_correct, n).astype(bool))

    results = {"BLEnD": {"original": res(150, 300), "general": res(90, 300), "random0": res(150, 300)},
               "General": {"original": res(200, 300), "general": res(190, 300), "random0": res(200, 300)}}
    cultural = {"BLEnD": True, "General": False}
    v = from_results(results, cultural, inhibited="general")
    assert v.n_resamples == 10000
    assert v.to_dict() == from_results(results, cultural, inhibited="general", seed=0).to_dict()
    other = from_results(results, cultural, inhibited="general", seed=1)
    assert as_tuple(other.gap) != as_tuple(v.gap)
    assert from_results(results, cultural, inhibited="general", n_resamples=500).n_resamples == 500
