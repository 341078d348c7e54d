"""Edges of scorer.py that the mutation check found unguarded; expectations from the float64 reference in
test_scorer.py (plain autograd), never from the scorer."""
from __future__ import annotations

import math

import culnig_ext
from test_scorer import reference_scores
from tiny_models import random_items, tiny_model


def test_item_scores_of_a_single_group_match_the_reference():
    # Every item in one group: per-item scores do not depend on groups, and one group must not be refused.
    model = tiny_model("llama")
    items = [dict(item, group="only") for item in random_items(3, seed=5)]
    pairs = [("layers.0.mlp.gate_proj", 1), ("layers.1.self_attn.q_proj", 2)]
    got = culnig_ext.item_scores(model, items, pairs, batch_size=2, progress=False)
    for row, item in enumerate(items):
        _, sums, probs = reference_scores(model, "llama", [item])
        for col, (site, idx) in enumerate(pairs):
            expected = (sums[site][0, idx] / probs[0]).item()
            assert math.isclose(got[row, col].item(), expected, rel_tol=1e-5, abs_tol=1e-9)


def test_accumulators_snapshot_grows_rows_and_fills_untouched_sites():
    # The streaming scorer adds group rows as new groups appear, and a snapshot may come before a site's first
    # gradient: cpu() must hand back [G, N] float64 for every site, old sums kept, new rows and untouched sites 0.
    from collections import namedtuple

    import torch

    from culnig_ext.scorer import _Accumulators

    Site = namedtuple("Site", "name width")
    acc = _Accumulators([Site("a", 3), Site("b", 2)], n_groups=1)
    got = acc.get("a", torch.device("cpu"))
    got += torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    acc.rows = 3  # two groups appeared since
    out = acc.cpu()
    assert out["a"].dtype == torch.float64 and out["b"].dtype == torch.float64
    assert out["a"].tolist() == [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert out["b"].tolist() == [[0.0, 0.0]] * 3
    # A later update lands in the grown accumulator, not in a stale copy.
    acc.get("a", torch.device("cpu"))[2, 0] += 5.0
    assert acc.cpu()["a"].tolist() == [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, 0.0, 0.0]]
