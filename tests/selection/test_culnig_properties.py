"""Property tests (hypothesis) of the selection rules of ``culnig_ext.selection.culnig``: ``top_fraction``,
``general`` and ``specific`` against brute-force references written here in plain Python.

The generated scores are small integers (many ties, all-equal rows, zeros of both signs), so the references can
compute with Python floats and get bit-for-bit the values torch gets: sums of small integers are exact, and a
division or subtraction of exact operands is correctly rounded in both. Tie rule of the references: a stable
descending sort over the global order (layer, then gate, q, k, v, then index), i.e. among equal scores the neuron
that comes first in that order wins; counts are ``int(n * t)`` in float arithmetic.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import HealthCheck, example, given, settings, strategies as st

from culnig_ext.scoring.table import ScoreTable
from culnig_ext.selection.culnig import general, random_like, specific, top_fraction
from culnig_ext.selection.neurons import NeuronSet

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PROJ = {"mlp.gate_proj": 0, "self_attn.q_proj": 1, "self_attn.k_proj": 2, "self_attn.v_proj": 3}

# Few distinct values, so ties are common; -0.0 and 0.0 compare equal and must tie.
values = st.sampled_from([-2.0, -1.0, -0.0, 0.0, 1.0, 2.0, 3.0])
fractions = st.one_of(st.sampled_from([0.0, 0.1, 0.25, 0.29, 0.5, 1 / 3, 0.7, 1.0]),
                      st.floats(0.0, 1.0, allow_nan=False))


def ref_top(scores: list[float], fraction: float) -> list[int]:
    """Positions of the top int(n * fraction), stable descending (lower position first among equal scores)."""
    k = int(len(scores) * fraction)
    return sorted(range(len(scores)), key=lambda i: -scores[i])[:k]


# ------------------------------------------------------------------------------------------- top_fraction
@SETTINGS
@given(st.lists(values, max_size=60), fractions)
@example([0.0, -0.0, 0.0, -0.0], 0.5)  # signed zeros tie: position order, not the sign bit
@example([1.0] * 7, 0.29)  # all equal: the first int(7 * 0.29) = 2 positions
def test_top_fraction_is_brute_force_top(scores, fraction):
    got = top_fraction(torch.tensor(scores, dtype=torch.float64), fraction).tolist()
    assert got == ref_top(scores, fraction)
    # invariant, independent of the tie rule: nothing left out beats anything taken
    left = set(range(len(scores))) - set(got)
    if got and left:
        assert min(scores[i] for i in got) >= max(scores[i] for i in left)


@SETTINGS
@given(st.lists(values, min_size=1, max_size=60), fractions, fractions)
def test_top_fraction_nested_in_fraction(scores, f1, f2):
    """A smaller fraction takes a prefix of a larger one's selection."""
    lo, hi = sorted((f1, f2))
    s = torch.tensor(scores, dtype=torch.float64)
    small, big = top_fraction(s, lo).tolist(), top_fraction(s, hi).tolist()
    assert big[: len(small)] == small and len(small) == math.floor(len(scores) * lo)


# ------------------------------------------------------------------------------------------- table builder
@st.composite
def layouts(draw):
    """{site: width} over 1-2 layers with at least one MLP and one attention site."""
    layers = draw(st.integers(1, 2))
    out = {}
    for layer in range(layers):
        for proj in PROJ:
            if draw(st.booleans()) or (layer == 0 and proj in ("mlp.gate_proj", "self_attn.q_proj")):
                out[f"layers.{layer}.{proj}"] = draw(st.integers(1, 9))
    return out


def site_rank(site: str) -> tuple[int, int]:
    _, layer, proj = site.split(".", 2)
    return int(layer), PROJ[proj]


def global_order(widths):
    return [(s, i) for s in sorted(widths, key=site_rank) for i in range(widths[s])]


@st.composite
def raw_tables(draw, widths, groups, *, equal_rows=None):
    """(groups, counts, prob, {site: [[int per neuron] per group]}) and the ScoreTable of it. ``equal_rows``:
    every group holds the same row (drawn when None)."""
    if equal_rows is None:
        equal_rows = draw(st.booleans())
    counts = [draw(st.integers(1, 5)) for _ in groups]
    prob = [draw(st.integers(1, 8)) / 2 for _ in groups]
    sums = {}
    for site, w in widths.items():
        row = lambda: [draw(st.integers(-3, 3)) for _ in range(w)]  # noqa: E731
        first = row()
        sums[site] = [list(first) if equal_rows or g == 0 else row() for g in range(len(groups))]
    # Site dict in a shuffled (non-model) order: the code must order sites itself.
    order = draw(st.permutations(list(sums)))
    table = ScoreTable(groups, counts, {s: torch.tensor(sums[s], dtype=torch.float64) for s in order}, prob,
                       {"model": "m"})
    return dict(groups=list(groups), counts=counts, prob=prob, sums=sums, table=table)


def kind(site):
    return "mlp" if ".mlp." in site else "attn"


def total_div(raw, normalize):
    return {"count": float(sum(raw["counts"])), "prob": float(sum(raw["prob"])), "none": 1.0}[normalize]


def pooled(raw, normalize, keys):
    d = total_div(raw, normalize)
    return {(s, i): float(sum(raw["sums"][s][g][i] for g in range(len(raw["groups"])))) / d for s, i in keys}


# --------------------------------------------------------------------------------------------------- general
@st.composite
def general_cases(draw):
    widths = draw(layouts())
    groups = draw(st.sampled_from([["A"], ["A", "B"], ["B", "A", "C"]]))
    neur = draw(raw_tables(widths, groups))
    ctrl = draw(st.none() | raw_tables(widths, draw(st.sampled_from([["A"], ["C", "B"]]))))
    crc = draw(st.none() | raw_tables(widths, ["A", "B"]))
    contrast = draw(st.none() | raw_tables(widths, ["all"]))
    fr = [draw(fractions) for _ in range(4)]
    normalize = draw(st.sampled_from(["count", "prob", "none"]))
    return widths, neur, ctrl, crc, contrast, fr, normalize


@SETTINGS
@given(general_cases())
def test_general_is_brute_force_top_minus_countryrc(case):
    widths, neur, ctrl, crc, contrast, (t_mlp, t_attn, r_mlp, r_attn), normalize = case
    got = general(neur["table"], ctrl and ctrl["table"], crc and crc["table"], t_mlp, t_attn, r_mlp, r_attn,
                  normalize=normalize, contrast=contrast and contrast["table"])
    got_scores = {(n.site, n.index): n.score for n in got}
    expected = {}
    for k, t, r in (("mlp", t_mlp, r_mlp), ("attn", t_attn, r_attn)):
        keys = [key for key in global_order(widths) if kind(key[0]) == k]
        score = pooled(neur, normalize, keys)
        for other in (ctrl, contrast):  # both subtracted, each by its own total, ctrl first
            if other is not None:
                c = pooled(other, normalize, keys)
                score = {key: score[key] - c[key] for key in keys}
        top = sorted(keys, key=lambda key: -score[key])[: int(len(keys) * t)]
        kept = list(top)
        if crc is not None:
            c = pooled(crc, normalize, keys)
            removed = sorted(keys, key=lambda key: -c[key])[: int(len(keys) * r)]
            kept = [key for key in top if key not in set(removed)]
            # removal never adds and removes exactly the top-by-crc neurons that were selected
            assert len(top) - len(kept) == len(set(top) & set(removed))
        mine = {key for key in got_scores if kind(key[0]) == k}
        assert mine <= set(top)
        expected.update({key: score[key] for key in kept})
    assert got_scores == expected


# -------------------------------------------------------------------------------------------------- specific
@st.composite
def specific_cases(draw):
    widths = draw(layouts())
    groups = draw(st.sampled_from([["A"], ["A", "B"], ["A", "B", "C"], ["C", "A", "B", "D"]]))
    neur = draw(raw_tables(widths, groups))
    # ctrl holds every group of neur, in another order, maybe one more
    ctrl_groups = draw(st.permutations(groups + draw(st.sampled_from([[], ["Z"]]))))
    ctrl = draw(st.none() | raw_tables(widths, ctrl_groups))
    crc = draw(st.none() | raw_tables(widths, draw(st.permutations(groups))))
    group = draw(st.sampled_from(groups))
    t, r = draw(fractions), draw(fractions)
    z_min = draw(st.none() | st.sampled_from([-1.0, 0.0, 0.5, 1.0]))
    normalize = draw(st.sampled_from(["count", "prob", "none", "total"]))
    return widths, neur, ctrl, crc, group, t, r, z_min, normalize


def group_div(raw, g, normalize):
    if normalize == "total":
        return float(sum(raw["counts"]))
    if normalize == "none":
        return 1.0
    row = raw["groups"].index(g)
    return float(raw["counts"][row] if normalize == "count" else raw["prob"][row])


@SETTINGS
@given(specific_cases())
def test_specific_is_brute_force_top_minus_countryrc_then_z(case):
    widths, neur, ctrl, crc, group, t, r, z_min, normalize = case
    got = specific(neur["table"], ctrl and ctrl["table"], crc and crc["table"], group, t, r, z_min,
                   normalize=normalize)
    got_scores = {(n.site, n.index): n.score for n in got}
    keys = global_order(widths)
    groups = neur["groups"]

    def s_of(g, key):
        site, i = key
        v = neur["sums"][site][groups.index(g)][i] / group_div(neur, g, normalize)
        if ctrl is not None:
            v -= ctrl["sums"][site][ctrl["groups"].index(g)][i] / group_div(ctrl, g, normalize)
        return v

    top = sorted(keys, key=lambda key: -s_of(group, key))[: int(len(keys) * t)]
    if crc is not None:
        d = group_div(crc, group, normalize)
        crc_score = {(s, i): crc["sums"][s][crc["groups"].index(group)][i] / d for s, i in keys}
        removed = set(sorted(keys, key=lambda key: -crc_score[key])[: int(len(keys) * r)])
        top = [key for key in top if key not in removed]
    assert set(got_scores) <= set(top)
    for key in top:
        row = np.array([s_of(g, key) for g in groups])
        # numpy reference z-score; population sd; all groups equal (exactly) -> 0
        flat = bool((row == row[0]).all())
        z = 0.0 if flat else float((row[groups.index(group)] - row.mean()) / row.std())
        if flat or z_min is None or abs(z - z_min) > 1e-9:  # on the threshold within rounding: either way is right
            assert (key in got_scores) == (z_min is None or z >= z_min), (key, z)
        if key in got_scores:
            assert got_scores[key] == s_of(group, key)


@SETTINGS
@given(st.data())
def test_specific_single_group_or_equal_rows_has_z_zero(data):
    """One group, or every group the same row: all z-scores are 0, so z_min 0 keeps the whole top and any
    positive z_min keeps nothing."""
    widths = data.draw(layouts())
    groups = data.draw(st.sampled_from([["A"], ["A", "B", "C"]]))
    neur = data.draw(raw_tables(widths, groups, equal_rows=True))
    t = data.draw(fractions)
    normalize = data.draw(st.sampled_from(["none", "total"]))  # equal divisors, so equal rows stay equal
    n = sum(widths.values())
    kept = specific(neur["table"], None, None, "A", t, 0.0, 0.0, normalize=normalize)
    assert len(kept) == int(n * t)
    assert len(specific(neur["table"], None, None, "A", t, 0.0, 1e-12, normalize=normalize)) == 0


# ---------------------------------------------------------------------------------------------- random_like
@SETTINGS
@given(st.data())
def test_random_like_matches_sizes_and_avoids_exclude(data):
    widths = data.draw(layouts())
    keys = global_order(widths)
    like = NeuronSet.from_pairs(data.draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys))))
    exclude = data.draw(st.none() | st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
    match = data.draw(st.sampled_from(["site", "kind", "none"]))
    seed = data.draw(st.integers(0, 2**31))
    ex = NeuronSet.from_pairs(exclude) if exclude is not None else None

    def scope(site):
        return {"site": site, "kind": kind(site), "none": ""}[match]

    def tally(pairs):
        out = {}
        for site, _ in pairs:
            out[scope(site)] = out.get(scope(site), 0) + 1
        return out

    want = tally(like.pairs)
    banned = set(exclude or [])
    room = tally([key for key in keys if key not in banned])
    if any(want[s] > room.get(s, 0) for s in want):
        return  # too few left to draw from: refused (tested by hand elsewhere)
    got = random_like(like, widths, seed, match, exclude=ex)
    assert tally(got.pairs) == want and len(got) == len(like)
    assert not set(got.pairs) & banned and set(got.pairs) <= set(keys)
    assert random_like(like, widths, seed, match, exclude=ex) == got  # a seed means one set
