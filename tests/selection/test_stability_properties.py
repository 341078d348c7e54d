"""Property tests (hypothesis) of ``culnig_ext.selection.stability``: ``jaccard`` against counting by hand and the
Jaccard distance's metric axioms; ``label_parts`` a balanced partition; ``collapse`` against adding the part rows
by hand in plain Python."""
from __future__ import annotations

import math

import torch
from hypothesis import given, settings, strategies as st

from culnig_ext.scoring.table import ScoreTable
from culnig_ext.selection.stability import SEP, collapse, jaccard, label_parts

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)
small_sets = st.sets(st.integers(0, 12), max_size=10)


@SETTINGS
@given(small_sets, small_sets, small_sets)
def test_jaccard_counts_and_is_a_metric(a, b, c):
    universe = sorted(a | b | c)
    both = sum(1 for x in universe if x in a and x in b)
    either = sum(1 for x in universe if x in a or x in b)
    j = jaccard(a, b)
    if either == 0:
        assert math.isnan(j)
        return
    assert j == both / either
    assert 0.0 <= j <= 1.0 and j == jaccard(b, a)
    assert (j == 1.0) == (a == b) and (j == 0.0) == (not a & b)
    # 1 - J is a metric (the Jaccard distance): the triangle inequality
    if (a | c) and (b | c):
        assert (1 - j) <= (1 - jaccard(a, c)) + (1 - jaccard(c, b)) + 1e-12


@SETTINGS
@given(st.lists(st.sampled_from(["US", "UK", "JP"]), max_size=40), st.integers(2, 7), st.integers(0, 10**6))
def test_label_parts_is_a_balanced_partition(groups, n_parts, seed):
    items = [{"id": f"i{k}", "group": g} for k, g in enumerate(groups)]
    out = label_parts(items, n_parts, seed)
    assert out == label_parts(items, n_parts, seed)
    assert len(out) == len(items)
    sizes = [0] * n_parts
    for item, labelled in zip(items, out):
        group, sep, part = labelled["group"].rpartition(SEP)
        assert sep and group == item["group"] and labelled["id"] == item["id"]
        sizes[int(part)] += 1
    assert sum(sizes) == len(items) and max(sizes) - min(sizes) <= 1


@st.composite
def parted_tables(draw):
    """A part-labelled table (rows ``group SEP part``, some (group, part) pairs missing) with small integer data."""
    n_parts = draw(st.integers(2, 4))
    pairs = draw(st.lists(st.tuples(st.sampled_from(["US", "UK", "JP"]), st.integers(0, n_parts - 1)),
                          min_size=1, max_size=8, unique=True))
    if all(p != n_parts - 1 for _, p in pairs):  # the table's part count is 1 + its largest part label
        pairs.append((pairs[0][0], n_parts - 1))
    widths = {"layers.0.mlp.gate_proj": draw(st.integers(1, 4)), "layers.0.self_attn.q_proj": draw(st.integers(1, 3))}
    rows = {s: [[draw(st.integers(-5, 5)) for _ in range(w)] for _ in pairs] for s, w in widths.items()}
    counts = [draw(st.integers(0, 6)) for _ in pairs]
    prob = [draw(st.integers(0, 8)) / 4 for _ in pairs]
    labels = [f"{g}{SEP}{p}" for g, p in pairs]
    table = ScoreTable(labels, counts, {s: torch.tensor(r, dtype=torch.float64) for s, r in rows.items()}, prob,
                       {"model": "m"})
    weights = draw(st.none() | st.lists(st.integers(0, 3), min_size=n_parts, max_size=n_parts))
    return pairs, rows, counts, prob, table, n_parts, weights


@SETTINGS
@given(parted_tables())
def test_collapse_adds_part_rows_by_hand(case):
    pairs, rows, counts, prob, table, n_parts, weights = case
    w = [1] * n_parts if weights is None else weights
    groups = []
    for g, p in pairs:  # first appearance among the rows with weight > 0
        if w[p] > 0 and g not in groups:
            groups.append(g)
    got = collapse(table, weights)
    assert got.groups == groups
    for gi, g in enumerate(groups):
        mine = [r for r, (gg, p) in enumerate(pairs) if gg == g]
        assert int(got.counts[gi]) == sum(w[pairs[r][1]] * counts[r] for r in mine)
        assert float(got.prob_sums[gi]) == sum(w[pairs[r][1]] * prob[r] for r in mine)
        for s in rows:
            expect = [sum(w[pairs[r][1]] * rows[s][r][i] for r in mine) for i in range(len(rows[s][0]))]
            assert got[s][gi].tolist() == expect
    assert got.sites == table.sites and got.metadata == table.metadata
