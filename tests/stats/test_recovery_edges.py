"""Recovery metrics at their edges, against values counted by hand: inputs of other shapes and dtypes (score
matrices, unsigned counts, group-id masks), one-neuron universes, k at its bounds, and Spearman's rho on two points,
on vectors of unequal length and on constant vectors (NaN, quietly)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from culnig_ext.stats.recovery import (
    auroc,
    average_precision,
    percentile_interval,
    precision_at_k,
    rank_correlation,
    ranking_metrics,
    recall_at_k,
    top_k,
)


def test_a_score_matrix_and_its_mask_are_read_row_major():
    # [layers, neurons] = [2, 3]: flattened, scores 0.9 0.1 0.5 | 0.8 0.3 0.7 and planted positions 0 and 4 (0.9, 0.3)
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.3, 0.7]])
    truth = np.array([[1, 0, 0], [0, 1, 0]], dtype=bool)
    # ranks: 0.9 (planted), 0.8, 0.7, 0.5, 0.3 (planted), 0.1
    assert top_k(scores, 3).tolist() == [0, 3, 5]
    assert precision_at_k(scores, truth) == 0.5  # top 2: 0.9 planted, 0.8 not
    assert recall_at_k(scores, truth, k=4) == 0.5
    # planted 0.9 beats all 4 unplanted, 0.3 beats only 0.1: 5 of 8 pairs; AP = (1/1 + 2/5) / 2
    assert auroc(scores, truth) == pytest.approx(5 / 8)
    assert average_precision(scores, truth) == pytest.approx((1 + 2 / 5) / 2)
    # two [2, 2] matrices, flattened to ranks (1, 2, 3, 4) and (1, 2, 4, 3): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert rank_correlation([[1, 2], [3, 4]], [[10, 20], [40, 30]]) == pytest.approx(0.8)


def test_unsigned_count_scores_rank_highest_first():
    # token counts stored as uint8: 200 > 7 > 3 > 0 (a negation in the integer type would wrap around)
    counts = np.array([3, 200, 0, 7], dtype=np.uint8)
    truth = [0, 1, 0, 1]
    assert top_k(counts, 2).tolist() == [1, 3]
    assert precision_at_k(counts, truth) == 1.0
    assert ranking_metrics(counts, truth) == {"precision_at_k": 1.0, "recall_at_k": 1.0, "average_precision": 1.0,
                                              "auroc": 1.0}


def test_truth_is_a_mask_any_nonzero_is_planted():
    # planted neurons marked by their group id (1, 3), unplanted by 0: the same as a 0/1 mask
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    ids = [3, 0, 1, 0, 0]
    assert precision_at_k(scores, ids) == 0.5 and recall_at_k(scores, ids, k=3) == 1.0
    assert average_precision(scores, ids) == pytest.approx((1 + 2 / 3) / 2)
    assert ranking_metrics(scores, ids)["recall_at_k"] == 0.5


def test_one_neuron_universe():
    assert precision_at_k([0.4], [1]) == 1.0 and recall_at_k([0.4], [1]) == 1.0
    assert average_precision([0.4], [True]) == 1.0
    assert top_k([0.4], 5).tolist() == [0]


def test_k_at_its_bounds():
    scores, truth = [0.9, 0.8, 0.7, 0.6, 0.5], [1, 0, 1, 0, 0]
    assert top_k(scores, 0).tolist() == []
    for bad in (1.5, True, -1):
        with pytest.raises(ValueError, match="k must be a non-negative integer"):
            top_k(scores, bad)
    with pytest.raises(ValueError, match="k >= 1"):
        precision_at_k(scores, truth, k=0)
    with pytest.raises(ValueError, match="k >= 1"):
        precision_at_k(scores, [0, 0, 0, 0, 0])  # k defaults to the number planted: 0
    with pytest.raises(ValueError, match="k >= 1"):
        ranking_metrics(scores, truth, k=0)
    # an explicit k, not the number planted: top 1 is 0.9 (planted); top 3 hold both planted
    assert ranking_metrics(scores, truth, k=1)["precision_at_k"] == 1.0
    m = ranking_metrics(scores, truth, k=3)
    assert m["precision_at_k"] == pytest.approx(2 / 3) and m["recall_at_k"] == 1.0


def test_ranking_metrics_with_one_planted_and_refusals():
    # one planted neuron at rank 2 of 4: P@1 = 0, AP = 1/2, AUROC: it beats 2 of the 3 unplanted
    m = ranking_metrics([0.9, 0.8, 0.7, 0.6], [0, 1, 0, 0])
    assert m == {"precision_at_k": 0.0, "recall_at_k": 0.0, "average_precision": 0.5, "auroc": pytest.approx(2 / 3)}
    for truth in ([1, 1, 1], [0, 0, 0]):
        with pytest.raises(ValueError, match="planted and unplanted"):
            ranking_metrics([0.3, 0.2, 0.1], truth)


def test_percentile_interval_leaves_out_missing_replicates():
    # None (a replicate that could not be computed) and NaN are left out: the interval of 0, 1, 2, 3, 4
    lo, hi = percentile_interval([0.0, None, 1.0, math.nan, 2.0, 3.0, 4.0], level=0.5)
    assert (lo, hi) == (pytest.approx(1.0), pytest.approx(3.0))  # 25th and 75th percentiles of 0..4


def test_rank_correlation_edges():
    # two points: rho is +-1
    assert rank_correlation([1, 2], [5, 9]) == pytest.approx(1.0)
    assert rank_correlation([1, 2], [9, 5]) == pytest.approx(-1.0)
    for x, y in (([1, 2, 3], [1, 2]), ([1], [1])):
        with pytest.raises(ValueError, match="same length >= 2"):
            rank_correlation(x, y)
    # a constant vector on either side: NaN, without scipy's constant-input warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for x, y in (([1, 1, 1], [1, 2, 3]), ([1, 2, 3], [5, 5, 5]), ([2, 2], [2, 2])):
            assert math.isnan(rank_correlation(x, y))
        # not constant on either side: a value (ranks (1, 2, 3) and (2, 1, 3): rho = 1 - 6 * 2 / 24 = 0.5)
        assert rank_correlation([1, 2, 3], [2, 1, 3]) == pytest.approx(0.5)
