"""Recovery metrics against examples worked out by hand (pairs counted, precision at each hit written out)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from culnig_ext.stats.recovery import (
    auroc,
    average_precision,
    confusion,
    percentile_interval,
    precision_at_k,
    rank_correlation,
    ranking_metrics,
    recall_at_k,
    set_metrics,
    top_k,
)

# Five neurons ranked 0.9 > 0.8 > 0.7 > 0.6 > 0.5; planted: the 1st and the 3rd.
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5]
TRUTH = [1, 0, 1, 0, 0]


def test_auroc_by_pairs():
    # planted {0.9, 0.7} x unplanted {0.8, 0.6, 0.5}: 0.9 beats all 3, 0.7 beats 0.6 and 0.5 -> 5 of 6 pairs.
    assert auroc(SCORES, TRUTH) == pytest.approx(5 / 6)


def test_average_precision_by_ranks():
    # hits at ranks 1 and 3: precision 1/1 and 2/3, averaged over the 2 planted.
    assert average_precision(SCORES, TRUTH) == pytest.approx((1 + 2 / 3) / 2)


def test_precision_recall_at_k():
    # k defaults to the number planted (2): the top 2 are 0.9 (planted) and 0.8 (not).
    assert precision_at_k(SCORES, TRUTH) == 0.5
    assert recall_at_k(SCORES, TRUTH) == 0.5
    assert precision_at_k(SCORES, TRUTH, k=3) == pytest.approx(2 / 3)
    assert recall_at_k(SCORES, TRUTH, k=3) == 1.0
    assert recall_at_k(SCORES, TRUTH, k=1) == 0.5 and precision_at_k(SCORES, TRUTH, k=1) == 1.0
    assert ranking_metrics(SCORES, TRUTH) == {"precision_at_k": 0.5, "recall_at_k": 0.5,
                                               "average_precision": pytest.approx(5 / 6),
                                               "auroc": pytest.approx(5 / 6)}


def test_ties():
    # One planted and one unplanted neuron tie at the top: the pair counts 1/2, the other pair 1 -> 0.75.
    assert auroc([1.0, 1.0, 0.0], [1, 0, 0]) == pytest.approx(0.75)
    # A tie is one threshold: precision 1/2 at recall 1 -> AP 0.5.
    assert average_precision([1.0, 1.0, 0.0], [1, 0, 0]) == pytest.approx(0.5)
    # top-k breaks ties by position: the planted neuron (position 1) loses to position 0.
    assert top_k([1.0, 1.0, 0.0], 1).tolist() == [0]
    assert precision_at_k([1.0, 1.0, 0.0], [0, 1, 0]) == 0.0


def test_perfect_and_reversed():
    assert ranking_metrics([3, 2, 1, 0], [1, 1, 0, 0]) == {"precision_at_k": 1.0, "recall_at_k": 1.0,
                                                        "average_precision": 1.0, "auroc": 1.0}
    m = ranking_metrics([0, 1, 2, 3], [1, 1, 0, 0])
    assert m["auroc"] == 0.0 and m["precision_at_k"] == 0.0
    # reversed: hits at ranks 3 and 4 -> (1/3 + 2/4) / 2
    assert m["average_precision"] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_refusals():
    with pytest.raises(ValueError, match="finite"):
        auroc([math.inf, 0.0], [1, 0])
    with pytest.raises(ValueError, match="planted and unplanted"):
        auroc([1.0, 0.0], [1, 1])
    with pytest.raises(ValueError, match="differ in length"):
        auroc([1.0, 0.0], [1])
    with pytest.raises(ValueError, match="at least one planted"):
        recall_at_k([1.0, 0.0], [0, 0])


def test_set_metrics():
    m = set_metrics({("a", 1), ("a", 2), ("b", 0)}, {("a", 1), ("c", 5)})
    # 1 hit of 3 selected and of 2 planted; F1 = 2 * (1/3 * 1/2) / (1/3 + 1/2) = 0.4
    assert m == {"precision": pytest.approx(1 / 3), "recall": 0.5, "f1": pytest.approx(0.4), "selected": 3,
                 "planted": 2, "hits": 1}
    assert set_metrics(set(), {1})["precision"] == 0.0 and set_metrics(set(), {1})["f1"] == 0.0


def test_confusion():
    selected = {"X": {1, 2, 3}, "Y": {3, 4}}
    truth = {"X": {1, 2}, "Y": {3, 4, 5, 6}}
    # X's set holds both of X's planted (1) and one of Y's four (1/4); Y's set: none of X's, two of Y's (1/2).
    np.testing.assert_array_equal(confusion(selected, truth), np.array([[1.0, 0.25], [0.0, 0.5]]))


def test_percentile_interval():
    # 0..100: numpy's linear interpolation puts the 2.5th and 97.5th percentiles at 2.5 and 97.5.
    assert percentile_interval(np.arange(101)) == (pytest.approx(2.5), pytest.approx(97.5))
    assert all(math.isnan(v) for v in percentile_interval([math.nan]))


def test_rank_correlation():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = (1, 2, 3), y = (1, 3, 2): rho = 1 - 6 * (0 + 1 + 1) / (3 * 8) = 0.5
    assert rank_correlation([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert math.isnan(rank_correlation([1, 1, 1], [1, 2, 3]))


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_scikit_learn(seed):
    """The one-sort formulas against scikit-learn's own functions, on scores with many ties and without."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(seed)
    n = 500
    truth = np.zeros(n, dtype=bool)
    truth[rng.choice(n, 20 + seed, replace=False)] = True
    tied = rng.integers(0, 7, size=n).astype(float) + truth * rng.integers(0, 3, size=n)
    smooth = rng.normal(size=n) + truth * 0.8
    for scores in (tied, smooth):
        assert auroc(scores, truth) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
        assert average_precision(scores, truth) == pytest.approx(average_precision_score(truth, scores), abs=1e-12)
        m = ranking_metrics(scores, truth)
        assert m["auroc"] == auroc(scores, truth) and m["average_precision"] == average_precision(scores, truth)
        assert m["precision_at_k"] == precision_at_k(scores, truth)
