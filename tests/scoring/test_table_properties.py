"""Property tests (hypothesis) of ``ScoreTable.merge``: tables built by hand from random items split into disjoint
shards merge into the table of all items summed by hand; merge is commutative (up to group order) and associative
over disjoint shards, the dataset fingerprint included; shards that share an item are refused.

Scores are small integers, so every sum is exact in any order and tables can be compared for equality."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from culnig_ext.data.streaming import item_hash
from culnig_ext.scoring.table import ScoreTable

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)
WIDTHS = {"layers.0.mlp.gate_proj": 3, "layers.0.self_attn.q_proj": 2, "layers.1.mlp.gate_proj": 1}
MASK = (1 << 64) - 1


@st.composite
def items(draw, min_size=0):
    n = draw(st.integers(min_size, 12))
    return [dict(id=f"it{k}", group=draw(st.sampled_from(["US", "UK", "JP", "IR"])),
                 prob=draw(st.integers(0, 4)) / 4,
                 rows={s: [draw(st.integers(-4, 4)) for _ in range(w)] for s, w in WIDTHS.items()})
            for k in range(n)]


def by_hand(its):
    """The table of some items: groups in order of first appearance, everything summed in plain Python."""
    groups = list(dict.fromkeys(it["group"] for it in its))
    counts = [sum(1 for it in its if it["group"] == g) for g in groups]
    prob = [sum(it["prob"] for it in its if it["group"] == g) for g in groups]
    sums = {s: [[sum(it["rows"][s][i] for it in its if it["group"] == g) for i in range(w)] for g in groups]
            for s, w in WIDTHS.items()}
    fp = 0
    for it in its:
        fp = (fp + (item_hash(it["id"]) & MASK)) & MASK  # any additive per-item hash will do
    hashes = torch.tensor(sorted(item_hash(it["id"]) for it in its), dtype=torch.int64)
    table = ScoreTable(groups, counts,
                       {s: torch.tensor(v, dtype=torch.float64).reshape(len(groups), WIDTHS[s]) for s, v in sums.items()},
                       prob, {"model": "m", "dataset_fingerprint": f"{fp:016x}"}, hashes)
    return table, dict(groups=groups, counts=counts, prob=prob, sums=sums, fp=f"{fp:016x}")


def content(t: ScoreTable) -> dict:
    """Group -> (count, prob, rows): equality up to the order of the groups."""
    return {g: (int(t.counts[r]), float(t.prob_sums[r]), {s: t[s][r].tolist() for s in t.sites})
            for r, g in enumerate(t.groups)}


def same(a: ScoreTable, b: ScoreTable) -> None:
    assert a.groups == b.groups and a.sites == b.sites
    assert torch.equal(a.counts, b.counts) and torch.equal(a.prob_sums, b.prob_sums)
    assert all(torch.equal(a[s], b[s]) for s in a.sites)
    assert torch.equal(a.item_hashes, b.item_hashes) and a.metadata == b.metadata


@st.composite
def shards(draw, k_min=1, k_max=4):
    its = draw(items(min_size=k_max))
    k = draw(st.integers(k_min, k_max))
    # a random disjoint split into k non-empty shards
    order = draw(st.permutations(range(len(its))))
    cuts = sorted(draw(st.lists(st.integers(1, len(its) - 1), min_size=k - 1, max_size=k - 1, unique=True)))
    parts = [order[a:b] for a, b in zip([0] + cuts, cuts + [len(its)])]
    return its, [[its[i] for i in sorted(p)] for p in parts]


@SETTINGS
@given(shards())
def test_merge_equals_summing_all_items_by_hand(case):
    its, parts = case
    merged = ScoreTable.merge([by_hand(p)[0] for p in parts])
    _, want = by_hand([it for p in parts for it in p])  # items in shard order: groups in first appearance
    assert merged.groups == want["groups"]
    assert merged.counts.tolist() == want["counts"] and merged.prob_sums.tolist() == want["prob"]
    for s in WIDTHS:
        assert merged[s].tolist() == want["sums"][s]
    assert merged.metadata["dataset_fingerprint"] == by_hand(its)[1]["fp"]  # the unsharded data's
    assert merged.item_hashes.tolist() == sorted(item_hash(it["id"]) for it in its)


@SETTINGS
@given(shards(k_min=3, k_max=3), st.permutations(range(3)))
def test_merge_is_commutative_and_associative(case, perm):
    _, parts = case
    a, b, c = (by_hand(p)[0] for p in parts)
    abc = ScoreTable.merge([a, b, c])
    same(ScoreTable.merge([ScoreTable.merge([a, b]), c]), abc)
    same(ScoreTable.merge([a, ScoreTable.merge([b, c])]), abc)
    shuffled = ScoreTable.merge([(a, b, c)[i] for i in perm])
    assert content(shuffled) == content(abc)
    assert shuffled.metadata == abc.metadata and torch.equal(shuffled.item_hashes, abc.item_hashes)


@SETTINGS
@given(items(min_size=2), st.data())
def test_merge_refuses_exactly_the_overlapping_shards(its, data):
    """Two shards drawn independently from the same items merge only when they share no item."""
    one = data.draw(st.lists(st.sampled_from(its), min_size=1, unique_by=lambda it: it["id"]))
    two = data.draw(st.lists(st.sampled_from(its), min_size=1, unique_by=lambda it: it["id"]))
    shared = {it["id"] for it in one} & {it["id"] for it in two}
    if shared:
        with pytest.raises(ValueError, match=f"share {len(shared)} item"):
            ScoreTable.merge([by_hand(one)[0], by_hand(two)[0]])
    else:
        ScoreTable.merge([by_hand(one)[0], by_hand(two)[0]])
