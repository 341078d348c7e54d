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
