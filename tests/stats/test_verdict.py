"""Relative excess drops, ratio and gap by hand, and the verdict rules on hand-made intervals and data."""
from __future__ import annotations

import numpy as np
import pytest

from culnig_ext.stats.verdict import (
    CULTURE_SPECIFIC,
    INCONCLUSIVE,
    NOT_SPECIFIC,
    Interval,
    SetOutcome,
    Verdict,
    decide,
    specificity,
)


def ones(n_correct: int, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[:n_correct] = True
    return out


def outcome(name, cultural, n, orig, ours, rand, n_random=3):
    """Nested correct sets (an item right under ours is right originally): exact accuracies orig/ours/rand."""
    return SetOutcome(name, cultural, ones(orig, n), ones(ours, n), np.stack([ones(rand, n)] * n_random))


def test_point_values_by_hand():
    sets = [outcome("BLEnD", True, 400, 300, 150, 270), outcome("CRC", True, 200, 180, 120, 180),
            outcome("general", False, 300, 240, 228, 240)]
    v = specificity(sets, n_resamples=2000)
    # D = (random - ours) / original per set
    d_blend, d_crc, d_gen = (0.675 - 0.375) / 0.75, (0.9 - 0.6) / 0.9, (0.8 - 0.76) / 0.8
    assert v.per_set["BLEnD"].value == pytest.approx(d_blend)
    assert v.per_set["CRC"].value == pytest.approx(d_crc)
    assert v.cultural.value == pytest.approx((d_blend + d_crc) / 2)
    assert v.non_cultural.value == pytest.approx(d_gen)
    assert v.ratio.value == pytest.approx(d_gen / ((d_blend + d_crc) / 2))
    assert v.gap.value == pytest.approx((d_blend + d_crc) / 2 - d_gen)
    for x in (v.cultural, v.non_cultural, v.gap, *v.per_set.values()):
        assert x.low <= x.value <= x.high
    # the interval of one set's D is about +-1.96 se; se of BLEnD's D by the delta method is roughly
    # sqrt(p(1-p)/n)/orig for the ours share (the random and original shares move with it here): loose bounds
    assert 0.03 < v.per_set["BLEnD"].high - v.per_set["BLEnD"].low < 0.25
    assert v.label == CULTURE_SPECIFIC


def test_verdicts_on_data():
    cult = outcome("BLEnD", True, 300, 150, 90, 150)  # D = 0.4
    spec = specificity([cult, outcome("gen", False, 300, 200, 200, 200)], n_resamples=2000)
    assert spec.label == CULTURE_SPECIFIC
    both = specificity([cult, outcome("gen", False, 300, 200, 100, 200)], n_resamples=2000)  # D_non = 0.5
    assert both.label == NOT_SPECIFIC
    nothing = specificity([outcome("BLEnD", True, 300, 150, 150, 150), outcome("gen", False, 300, 200, 200, 200)],
                          n_resamples=2000)
    assert nothing.label == INCONCLUSIVE and "do not drop significantly" in nothing.reason
    assert nothing.ratio is None  # a ratio over a zero cultural drop is undefined
    alone = specificity([cult], n_resamples=500)
    assert alone.label == INCONCLUSIVE and alone.non_cultural is None and "no non-cultural set" in alone.reason
    # round trip through the report's JSON form
    assert Verdict.from_dict(both.to_dict()).to_dict() == both.to_dict()


@pytest.mark.parametrize("cult,non,gap,label", [
    ((0.3, 0.1, 0.5), (0.0, -0.1, 0.1), (0.3, 0.05, 0.5), CULTURE_SPECIFIC),
    ((0.3, 0.1, 0.5), (0.3, 0.1, 0.5), (0.0, -0.3, 0.3), NOT_SPECIFIC),
    ((0.0, -0.1, 0.1), (0.3, 0.1, 0.5), (-0.3, -0.5, -0.1), NOT_SPECIFIC),   # only the non-cultural set drops
    ((0.3, 0.1, 0.5), (0.1, -0.05, 0.3), (0.2, -0.1, 0.5), INCONCLUSIVE),  # cultural drop, gap not established
    ((0.02, -0.1, 0.1), (0.0, -0.1, 0.1), (0.02, -0.1, 0.2), INCONCLUSIVE),  # nothing drops
    ((0.3, 0.0, 0.5), (0.0, -0.1, 0.1), (0.3, 0.1, 0.5), INCONCLUSIVE),  # a lower bound of exactly 0 is not > 0
])
def test_rules(cult, non, gap, label):
    got, reason = decide(Interval(*cult), Interval(*non), Interval(*gap))
    assert got == label and reason


def test_bad_input():
    with pytest.raises(ValueError, match="at least one cultural"):
        specificity([outcome("gen", False, 10, 5, 5, 5)])
    with pytest.raises(ValueError, match="BLEnD: original accuracy is 0"):
        specificity([outcome("BLEnD", True, 10, 0, 0, 0)])
    with pytest.raises(ValueError, match="BLEnD: original, ours and randoms cover 10, 9, 10"):
        specificity([SetOutcome("BLEnD", True, ones(5, 10), ones(5, 9), np.stack([ones(5, 10)]))])


def test_from_results_uses_the_named_conditions():
    from types import SimpleNamespace

    from culnig_ext.stats.verdict import from_results

    def res(n_correct, n):
        return SimpleNamespace(correct=ones(n_correct, n))

    results = {
        "BLEnD": {"original": res(150, 300), "general": res(90, 300), "random0": res(150, 300),
                  "random1": res(150, 300)},
        "General knowledge": {"original": res(200, 300), "general": res(200, 300), "random0": res(200, 300),
                              "random1": res(200, 300)},
        "Zero": {"original": res(0, 10), "general": res(0, 10), "random0": res(0, 10)},  # left out: D undefined
    }
    cultural = {"BLEnD": True, "General knowledge": False, "Zero": True}
    v = from_results(results, cultural, inhibited="general", n_resamples=2000)
    assert v.label == CULTURE_SPECIFIC and set(v.per_set) == {"BLEnD", "General knowledge"}
    assert v.cultural.value == pytest.approx(0.4)
    assert from_results(results, cultural, inhibited="chosen") is None  # no such condition
    assert from_results({"General knowledge": results["General knowledge"]}, cultural, inhibited="general") is None


@pytest.mark.parametrize("gap_low, label", [
    (0.01, INCONCLUSIVE),   # the gap is established: the non-cultural drop IS significantly less -> not rule 3
    (0.0, NOT_SPECIFIC),    # a gap lower bound of exactly 0 is not > 0 -> rule 3
    (-0.01, NOT_SPECIFIC),
])
def test_rule_3_needs_the_gap_not_established(gap_low, label):
    # The documented rule 3 (module docstring, docs/reading_a_report.md): "not specific" when D_non > 0 AND NOT
    # gap > 0. Here D_non > 0 and the cultural drop's own lower bound is not above 0 (so rule 2 does not apply);
    # whether it is "not specific" turns on the gap alone.
    cult, non, gap = Interval(0.3, -0.01, 0.6), Interval(0.1, 0.02, 0.2), Interval(0.2, gap_low, 0.4)
    got, reason = decide(cult, non, gap)
    assert got == label
    if label == INCONCLUSIVE:
        assert "do not drop significantly more than with random neurons" in reason
    else:
        assert "not significantly less" in reason
