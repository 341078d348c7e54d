"""general / specific / random_like against independent references written here in plain Python loops.

The references read the raw numpy arrays the tables were built from (never the tables or the selection helpers),
rank with Python's stable ``sorted`` over the global order (layer, then gate, q, k, v, then index) and count with
``int(n * t)``, as the paper's reference code does.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from culnig_ext.selection.neurons import Neuron, NeuronSet
from culnig_ext.selection.culnig import general, random_like, specific, top_fraction
from culnig_ext.scoring.table import ScoreTable

# A few sites of both kinds over two layers; attention widths differ per projection (GQA-like).
WIDTHS = {
    "layers.1.self_attn.v_proj": 8,  # dict deliberately not in model order
    "layers.0.mlp.gate_proj": 40,
    "layers.0.self_attn.q_proj": 16,
    "layers.0.self_attn.k_proj": 8,
    "layers.0.self_attn.v_proj": 8,
    "layers.1.mlp.gate_proj": 40,
    "layers.1.self_attn.q_proj": 16,
    "layers.1.self_attn.k_proj": 8,
}
PROJ = ["gate_proj", "q_proj", "k_proj", "v_proj"]


def ref_key(site):
    parts = site.split(".")
    return int(parts[1]), PROJ.index(parts[-1])


def ref_kind(site):
    return "mlp" if site.split(".")[2] == "mlp" else "attn"


def global_order(widths):
    """All (site, index) in the reference's global order."""
    return [(site, i) for site in sorted(widths, key=ref_key) for i in range(widths[site])]


def ranked(keys, score):
    """Stable descending sort: ties keep the global order."""
    return sorted(keys, key=lambda k: -score[k])


class Raw:
    """A table's raw data (numpy) and the ScoreTable built from it."""

    def __init__(self, groups, counts, sums, prob, model="tiny"):
        self.groups, self.counts, self.sums, self.prob = list(groups), list(counts), sums, list(prob)
        self.table = ScoreTable(
            groups, counts, {s: torch.tensor(a) for s, a in sums.items()}, torch.tensor(prob), {"model": model}
        )

    def row(self, group):
        return self.groups.index(group)


def random_raw(rng, groups, counts, *, like=None, like_weight=0.0, widths=WIDTHS, model="tiny"):
    """Random sums per group; ``like`` (a Raw) mixes in that table's per-group sums (matched by group name, or its
    group total when the group is absent) so that the top neurons of the two tables overlap."""
    sums = {}
    for site, w in widths.items():
        a = rng.normal(size=(len(groups), w)) * 3.0
        if like is not None:
            for gi, g in enumerate(groups):
                src = like.sums[site][like.row(g)] if g in like.groups else like.sums[site].sum(0)
                a[gi] += like_weight * src
        sums[site] = a
    prob = rng.uniform(0.5, 4.0, size=len(groups))
    return Raw(groups, counts, sums, prob, model)


def ref_total(raw, normalize):
    if normalize == "count":
        return float(sum(raw.counts))
    if normalize == "prob":
        return float(sum(raw.prob))
    return 1.0


def ref_group_div(raw, group, normalize):
    if normalize == "total":  # the reference code's division: the whole dataset's item count
        return float(sum(raw.counts))
    if normalize == "count":
        return float(raw.counts[raw.row(group)])
    if normalize == "prob":
        return float(raw.prob[raw.row(group)])
    return 1.0


def ref_general(neur, ctrl, crc, t_mlp, t_attn, r_mlp, r_attn, normalize="count", contrast=None, widths=WIDTHS):
    def pooled(raw):
        total = ref_total(raw, normalize)
        return {(s, i): sum(float(raw.sums[s][g][i]) for g in range(len(raw.groups))) / total
                for s, i in global_order(widths)}

    score = pooled(neur)
    for other in (ctrl, contrast):
        if other is not None:
            o = pooled(other)
            score = {k: score[k] - o[k] for k in score}
    crc_score = pooled(crc) if crc is not None else None
    out, info = {}, {}
    for kind, t, r in (("mlp", t_mlp, r_mlp), ("attn", t_attn, r_attn)):
        keys = [k for k in global_order(widths) if ref_kind(k[0]) == kind]
        top = ranked(keys, score)[: int(len(keys) * t)]
        removed = set(ranked(keys, crc_score)[: int(len(keys) * r)]) if crc is not None else set()
        info[kind] = dict(n=len(keys), top=len(top), overlap=len(set(top) & removed))
        out.update({k: score[k] for k in top if k not in removed})
    return out, info


def ref_specific(neur, ctrl, crc, group, t, r, z_min, normalize="count", widths=WIDTHS):
    keys = global_order(widths)
    per_group = {}
    for g in neur.groups:
        dn = ref_group_div(neur, g, normalize)
        dc = ref_group_div(ctrl, g, normalize) if ctrl is not None else None
        per_group[g] = {}
        for s, i in keys:
            v = float(neur.sums[s][neur.row(g)][i]) / dn
            if ctrl is not None:
                v -= float(ctrl.sums[s][ctrl.row(g)][i]) / dc
            per_group[g][(s, i)] = v
    top = ranked(keys, per_group[group])[: int(len(keys) * t)]
    removed = set()
    if crc is not None:
        dr = ref_group_div(crc, group, normalize)
        crc_score = {(s, i): float(crc.sums[s][crc.row(group)][i]) / dr for s, i in keys}
        removed = set(ranked(keys, crc_score)[: int(len(keys) * r)])
    out = {}
    for k in top:
        if k in removed:
            continue
        values = [per_group[g][k] for g in neur.groups]
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((x - mean) ** 2 for x in values) / len(values))
        z = 0.0 if sd == 0 else (per_group[group][k] - mean) / sd
        if z >= z_min:
            out[k] = per_group[group][k]
    return out, dict(n=len(keys), top=len(top), removed=len(set(top) & removed))


def as_dict(neuron_set):
    return {(n.site, n.index): n.score for n in neuron_set}


def assert_same(got: NeuronSet, expected: dict):
    assert set(as_dict(got)) == set(expected)
    for key, score in as_dict(got).items():
        assert score == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
    # Set order is the global order.
    order = {k: i for i, k in enumerate(global_order(WIDTHS))}
    assert [order[p] for p in got.pairs] == sorted(order[p] for p in got.pairs)


@pytest.fixture(scope="module")
def tables():
    rng = np.random.default_rng(1234)
    groups = ["China", "Iran", "Mexico", "Spain"]
    neur = random_raw(rng, groups, [5, 9, 3, 7])
    # Control: other group order plus an extra group, other counts; weakly like neur so contrast matters.
    ctrl = random_raw(rng, ["Spain", "UK", "Mexico", "China", "Iran"], [4, 2, 9, 6, 8], like=neur, like_weight=0.2)
    # CountryRC: groups in yet another order, strongly like neur so that its top overlaps the selection.
    crc = random_raw(rng, ["Mexico", "China", "Spain", "Iran"], [6, 6, 2, 5], like=neur, like_weight=3.0)
    contrast = random_raw(rng, ["all"], [11])
    return dict(neur=neur, ctrl=ctrl, crc=crc, contrast=contrast)


# -------------------------------------------------------------------------------------------- top_fraction
def test_top_fraction_counts_and_ties():
    s = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 0.0, 2.0])
    assert top_fraction(s, 0.5).tolist() == [1, 2, 4]  # floor(7 * 0.5) = 3; ties keep position order
    assert top_fraction(s, 0.6).tolist() == [1, 2, 4, 3]  # floor(4.2) = 4; 2.0 at 3 before 2.0 at 6
    assert top_fraction(s, 0.1).tolist() == []  # floor(0.7) = 0
    assert top_fraction(s, 1.0).tolist() == [1, 2, 4, 3, 6, 0, 5]
    # int(n * t) in float arithmetic, like the reference: 100 * 0.29 = 28.999999999999996 -> 28.
    assert len(top_fraction(torch.zeros(100, dtype=torch.float64), 0.29)) == int(100 * 0.29) == 28
    with pytest.raises(ValueError, match="fraction"):
        top_fraction(s, 1.5)


# -------------------------------------------------------------------------------------------------- general
@pytest.mark.parametrize("normalize", ["count", "prob", "none"])
def test_general_matches_reference(tables, normalize):
    neur, ctrl, crc = tables["neur"], tables["ctrl"], tables["crc"]
    args = (0.1, 0.15, 0.1, 0.125)
    got = general(neur.table, ctrl.table, crc.table, *args, normalize=normalize)
    expected, info = ref_general(neur, ctrl, crc, *args, normalize=normalize)
    assert_same(got, expected)
    # floor(n * t) per kind, then the CountryRC removal without replacement.
    assert info["mlp"]["n"] == 80 and info["mlp"]["top"] == 8
    assert info["attn"]["n"] == 64 and info["attn"]["top"] == 9  # floor(64 * 0.15) = floor(9.6)
    assert info["mlp"]["overlap"] > 0, "the synthetic CountryRC table should remove some neurons"
    kinds = got.counts_by_kind()
    assert kinds["mlp"] == 8 - info["mlp"]["overlap"]
    assert kinds["attn"] == 9 - info["attn"]["overlap"]
    assert got.method == "general"
    assert got.model == "tiny"
    assert got.params == dict(t_mlp=0.1, t_attn=0.15, r_mlp=0.1, r_attn=0.125, normalize=normalize,
                              control=True, countryrc=True, contrast=False)
    assert got.sources == {"neur": neur.table.fingerprint(), "ctrl": ctrl.table.fingerprint(),
                           "crc": crc.table.fingerprint()}


def test_general_removal_per_kind_not_replaced():
    gate, q = "layers.0.mlp.gate_proj", "layers.0.self_attn.q_proj"
    ramp = torch.arange(9.0, -1.0, -1.0, dtype=torch.float64)[None]  # scores 9..0: top-4 is indices 0..3
    neur = ScoreTable(["A"], [1], {gate: ramp, q: ramp})
    crc_gate = torch.zeros(1, 10, dtype=torch.float64)
    crc_gate[0, [0, 5]] = 1.0  # CountryRC top-2 of the gate neurons: 0 (selected) and 5 (not selected)
    crc_q = torch.zeros(1, 10, dtype=torch.float64)
    crc_q[0, [2, 9]] = torch.tensor([2.0, 3.0], dtype=torch.float64)  # CountryRC top-2 of q: 9 and 2
    crc = ScoreTable(["B"], [4], {gate: crc_gate, q: crc_q})
    got = general(neur, None, crc, t_mlp=0.4, t_attn=0.4, r_mlp=0.2, r_attn=0.2)
    assert got.pairs == [(gate, 1), (gate, 2), (gate, 3), (q, 0), (q, 1), (q, 3)]
    assert [n.score for n in got] == [8.0, 7.0, 6.0, 9.0, 8.0, 6.0]
    # Kinds are ranked separately: large attention CountryRC scores do not take the MLP removal slots (pooled, the
    # 20% of 20 = 4 slots would go to q 0, 9, 3, 2 and gate 0 would survive).
    crc_q[0, [0, 9, 3]] = torch.tensor([1e6, 1e5, 1e4], dtype=torch.float64)
    crc2 = ScoreTable(["B"], [4], {gate: crc_gate, q: crc_q})
    assert general(neur, None, crc2, 0.4, 0.4, 0.2, 0.2).pairs == [
        (gate, 1), (gate, 2), (gate, 3), (q, 1), (q, 2), (q, 3)
    ]


def test_general_normalizations_differ(tables):
    neur, ctrl = tables["neur"].table, tables["ctrl"].table
    results = {n: as_dict(general(neur, ctrl, None, 0.2, 0.2, normalize=n)) for n in ("count", "prob", "none")}
    assert set(results["count"]) != set(results["prob"])
    assert set(results["count"]) != set(results["none"])


def test_general_without_ctrl_and_crc(tables):
    neur = tables["neur"]
    got = general(neur.table, None, None, 0.25, 0.1)
    expected, info = ref_general(neur, None, None, 0.25, 0.1, 0.5, 0.5)
    assert_same(got, expected)
    assert got.counts_by_kind() == {"mlp": 20, "attn": 6}  # floor(80 * .25), floor(64 * .1): nothing removed
    assert got.params["control"] is False and got.params["countryrc"] is False
    assert set(got.sources) == {"neur"}


def test_general_with_contrast(tables):
    neur, ctrl, crc, contrast = tables["neur"], tables["ctrl"], tables["crc"], tables["contrast"]
    got = general(neur.table, ctrl.table, crc.table, 0.1, 0.1, 0.05, 0.05, contrast=contrast.table)
    expected, _ = ref_general(neur, ctrl, crc, 0.1, 0.1, 0.05, 0.05, contrast=contrast)
    assert_same(got, expected)
    without, _ = ref_general(neur, ctrl, crc, 0.1, 0.1, 0.05, 0.05)
    assert set(expected) != set(without)  # the extension changes the selection here
    assert got.params["contrast"] is True and got.sources["contrast"] == contrast.table.fingerprint()


def test_general_ties_broken_by_global_order():
    widths = {"layers.1.mlp.gate_proj": 5, "layers.0.mlp.gate_proj": 5, "layers.0.self_attn.v_proj": 4,
              "layers.0.self_attn.q_proj": 4}
    sums = {s: torch.zeros(2, w, dtype=torch.float64) for s, w in widths.items()}
    table = ScoreTable(["A", "B"], [1, 1], sums)
    got = general(table, None, None, t_mlp=0.7, t_attn=0.5)
    assert got.pairs == [("layers.0.mlp.gate_proj", i) for i in range(5)] + [
        ("layers.0.self_attn.q_proj", i) for i in range(4)
    ] + [("layers.1.mlp.gate_proj", 0), ("layers.1.mlp.gate_proj", 1)]


def test_general_refuses_mismatched_tables(tables):
    neur = tables["neur"].table
    missing = {s: a for s, a in tables["ctrl"].table.table.items() if s != "layers.1.self_attn.k_proj"}
    ctrl = ScoreTable(tables["ctrl"].groups, tables["ctrl"].counts, missing, metadata={"model": "tiny"})
    with pytest.raises(ValueError, match=r"ctrl table has different sites.*only in neur \['layers.1.self_attn.k_proj"):
        general(neur, ctrl, None)
    narrow = dict(tables["crc"].table.table)
    narrow["layers.0.self_attn.q_proj"] = narrow["layers.0.self_attn.q_proj"][:, :12]
    crc = ScoreTable(tables["crc"].groups, tables["crc"].counts, narrow)
    with pytest.raises(ValueError, match=r"'layers.0.self_attn.q_proj': width 16 in the neur table but 12 in the crc"):
        general(neur, None, crc)
    other = ScoreTable(tables["ctrl"].groups, tables["ctrl"].counts, tables["ctrl"].table.table,
                       metadata={"model": "other"})
    with pytest.raises(ValueError, match="model 'other'"):
        general(neur, other, None)
    with pytest.raises(ValueError, match="t_attn"):
        general(neur, None, None, t_attn=-0.1)
    with pytest.raises(ValueError, match="normalize"):
        general(neur, None, None, normalize="mean")
    zero_prob = ScoreTable(["A"], [3], {s: torch.zeros(1, w) for s, w in WIDTHS.items()})
    with pytest.raises(ValueError, match="neur table has total summed probability"):
        general(zero_prob, None, None, normalize="prob")


# ------------------------------------------------------------------------------------------------- specific
@pytest.mark.parametrize("group", ["China", "Iran", "Mexico", "Spain"])
@pytest.mark.parametrize("normalize", ["count", "prob", "total"])
def test_specific_matches_reference(tables, group, normalize):
    neur, ctrl, crc = tables["neur"], tables["ctrl"], tables["crc"]
    got = specific(neur.table, ctrl.table, crc.table, group, t=0.25, r=0.1, z_min=0.5, normalize=normalize)
    expected, info = ref_specific(neur, ctrl, crc, group, 0.25, 0.1, 0.5, normalize=normalize)
    assert_same(got, expected)
    assert info["n"] == 144 and info["top"] == 36  # pooled MLP and attention: floor(144 * 0.25)
    assert len(got) <= 36 - info["removed"]
    assert got.method == "specific"
    assert got.params == dict(group=group, t=0.25, r=0.1, z_min=0.5, normalize=normalize, control=True,
                              countryrc=True)
    assert got.sources == {"neur": neur.table.fingerprint(), "ctrl": ctrl.table.fingerprint(),
                           "crc": crc.table.fingerprint()}


def test_specific_filters_and_removal_are_active(tables):
    neur, ctrl, crc = tables["neur"], tables["ctrl"], tables["crc"]
    # Without the z filter (z_min None) the set is exactly the top minus the CountryRC neurons: not replaced.
    loose = specific(neur.table, ctrl.table, crc.table, "Iran", t=0.25, r=0.1, z_min=None, normalize="count")
    expected, info = ref_specific(neur, ctrl, crc, "Iran", 0.25, 0.1, -math.inf)
    assert_same(loose, expected)
    assert info["removed"] > 0
    assert len(loose) == 36 - info["removed"]
    strict = specific(neur.table, ctrl.table, crc.table, "Iran", t=0.25, r=0.1, z_min=1.5, normalize="count")
    assert 0 < len(strict) < len(loose)
    assert set(strict.pairs) <= set(loose.pairs)
    # Per-group normalization matters: count and prob select different neurons.
    a = specific(neur.table, ctrl.table, None, "Mexico", t=0.2, z_min=None, normalize="count")
    b = specific(neur.table, ctrl.table, None, "Mexico", t=0.2, z_min=None, normalize="prob")
    assert set(a.pairs) != set(b.pairs)
    c_total = specific(neur.table, ctrl.table, None, "Mexico", t=0.2, z_min=0.5, normalize="total")
    c_count = specific(neur.table, ctrl.table, None, "Mexico", t=0.2, z_min=0.5, normalize="count")
    assert set(c_total.pairs) != set(c_count.pairs)
    c, _ = ref_specific(neur, None, None, "Spain", 0.1, 0.0, 0.0, normalize="none")
    assert_same(specific(neur.table, None, None, "Spain", t=0.1, r=0.0, z_min=0.0, normalize="none"), c)


def test_specific_known_z_scores():
    # A gate site of 8 neurons and a q site of 1, 3 groups of one item each, target "A"; t = 1 so every neuron is a
    # candidate.
    columns = [
        [10, 0, 0],       # z = +1.41 -> kept
        [0.1, 0.1, 0.1],  # equal: z = 0 (even though the float mean of three 0.1 is not 0.1)
        [0, 5, 1],        # below the mean -> dropped
        [2, 1, 3],        # z = 0
        [3, 1, 2],        # z = +1.22 -> kept
        [2.2, 2, 3],      # z = -0.46
        [0, 0, 0],        # sd = 0: z = 0
        [5, 4, 0],        # z = +0.93 -> kept
    ]
    gate, q = "layers.0.mlp.gate_proj", "layers.0.self_attn.q_proj"
    sums = torch.tensor(columns, dtype=torch.float64).T.contiguous()  # [G=3, N=8]
    # Equal values again, alone in their site: here float rounding gives a tiny non-zero sd (naively z = +-1).
    q_sums = torch.tensor([[0.7], [0.7], [0.7]], dtype=torch.float64)
    table = ScoreTable(["A", "B", "C"], [1, 1, 1], {gate: sums, q: q_sums})
    got = specific(table, None, None, "A", t=1.0, r=0.0, z_min=0.5, normalize="count")
    assert got.pairs == [(gate, 0), (gate, 4), (gate, 7)]
    assert [n.score for n in got] == [10.0, 3.0, 5.0]
    at_zero = specific(table, None, None, "A", t=1.0, r=0.0, z_min=0.0, normalize="count")
    assert at_zero.pairs == [(gate, i) for i in (0, 1, 3, 4, 6, 7)] + [(q, 0)]
    # Item counts divide per group: B's count of 2 halves its scores. Column 1 becomes [.1, .05, .1] (z = +0.71),
    # column 3 [2, .5, 3] (z = +0.16), column 5 [2.2, 1, 3] (z = +0.16), column 7 [5, 2, 0] (z = +1.30), q's
    # column [.7, .35, .7] (z = +0.71).
    halved = ScoreTable(["A", "B", "C"], [1, 2, 1], {gate: sums, q: q_sums})
    assert specific(halved, None, None, "A", t=1.0, r=0.0, z_min=0.5, normalize="count").pairs == [
        (gate, i) for i in (0, 1, 4, 7)
    ] + [(q, 0)]
    assert specific(halved, None, None, "A", t=1.0, r=0.0, z_min=0.0, normalize="count").pairs == [
        (gate, i) for i in (0, 1, 3, 4, 5, 6, 7)
    ] + [(q, 0)]
    # t = 0.5 keeps the top floor(9 * .5) = 4 by A's score (10, 5, 3, 2.2) before the z filter.
    assert specific(table, None, None, "A", t=0.5, r=0.0, z_min=0.5, normalize="count").pairs == [(gate, 0), (gate, 4), (gate, 7)]
    assert specific(table, None, None, "A", t=0.5, r=0.0, z_min=None, normalize="count").pairs == [(gate, i) for i in (0, 4, 5, 7)]


def test_large_ties_keep_global_order():
    # Many equal scores (an unstable sort would scramble them): the first neurons in the global order win.
    widths = {"layers.1.mlp.gate_proj": 3000, "layers.0.mlp.gate_proj": 3000, "layers.0.self_attn.k_proj": 2000}
    table = ScoreTable(["A", "B"], [2, 3], {s: torch.zeros(2, w, dtype=torch.float64) for s, w in widths.items()})
    got = general(table, None, None, t_mlp=0.6, t_attn=0.25)
    assert got.pairs == [("layers.0.mlp.gate_proj", i) for i in range(3000)] + [
        ("layers.0.self_attn.k_proj", i) for i in range(500)
    ] + [("layers.1.mlp.gate_proj", i) for i in range(600)]
    spec = specific(table, None, None, "B", t=0.5, z_min=None, normalize="count")
    assert spec.pairs == [("layers.0.mlp.gate_proj", i) for i in range(3000)] + [
        ("layers.0.self_attn.k_proj", i) for i in range(1000)
    ]


def test_specific_errors(tables):
    neur, ctrl, crc = tables["neur"].table, tables["ctrl"].table, tables["crc"].table
    with pytest.raises(KeyError, match=r"'Japan'.*\['China', 'Iran', 'Mexico', 'Spain'\]"):
        specific(neur, ctrl, crc, "Japan")
    no_iran = ScoreTable([g for g in tables["ctrl"].groups if g != "Iran"],
                         [c for g, c in zip(tables["ctrl"].groups, tables["ctrl"].counts) if g != "Iran"],
                         {s: a[[i for i, g in enumerate(tables["ctrl"].groups) if g != "Iran"]]
                          for s, a in ctrl.table.items()})
    with pytest.raises(KeyError, match=r"ctrl table lacks group\(s\) \['Iran'\]"):
        specific(neur, no_iran, None, "China")  # every group of neur is needed for the z-scores
    crc_rows = [i for i, g in enumerate(tables["crc"].groups) if g != "Spain"]
    no_spain = ScoreTable([tables["crc"].groups[i] for i in crc_rows], [tables["crc"].counts[i] for i in crc_rows],
                          {s: a[crc_rows] for s, a in crc.table.items()})
    with pytest.raises(KeyError, match="crc table lacks group 'Spain'"):
        specific(neur, ctrl, no_spain, "Spain")
    assert len(specific(neur, ctrl, no_spain, "China", t=0.1)) > 0  # the target group is all crc must hold
    bad = ScoreTable(tables["ctrl"].groups, tables["ctrl"].counts,
                     {s: a for s, a in ctrl.table.items() if s != "layers.0.mlp.gate_proj"})
    with pytest.raises(ValueError, match="layers.0.mlp.gate_proj"):
        specific(neur, bad, None, "China")
    empty_group = ScoreTable(["A", "B"], [2, 0], {s: torch.zeros(2, w) for s, w in WIDTHS.items()})
    with pytest.raises(ValueError, match="group 'B'"):
        specific(empty_group, None, None, "A", normalize="count")
    with pytest.raises(ValueError, match="z_min must be a finite number, or None"):
        specific(neur, ctrl, crc, "China", z_min=-math.inf)
    with pytest.raises(ValueError, match=r"\bt must be"):
        specific(neur, ctrl, crc, "China", t=2.0)


# ---------------------------------------------------------------------------------------------- random_like
SOURCE = NeuronSet(
    [Neuron("layers.0.mlp.gate_proj", i, 1.0) for i in (1, 5, 9)]
    + [Neuron("layers.1.mlp.gate_proj", 30, 2.0)]
    + [Neuron("layers.0.self_attn.k_proj", i, 0.5) for i in (0, 7)]
    + [Neuron("layers.1.self_attn.v_proj", 3, 0.5)],
    method="general", model="tiny", sources={"neur": "abc"},
)


def per_site(neuron_set):
    out = {}
    for n in neuron_set:
        out[n.site] = out.get(n.site, 0) + 1
    return out


@pytest.mark.parametrize("widths_as", ["dict", "table"])
def test_random_like_site(widths_as, tables):
    widths = WIDTHS if widths_as == "dict" else tables["neur"].table
    got = random_like(SOURCE, widths, seed=3)
    assert per_site(got) == {"layers.0.mlp.gate_proj": 3, "layers.1.mlp.gate_proj": 1,
                             "layers.0.self_attn.k_proj": 2, "layers.1.self_attn.v_proj": 1}
    assert all(0 <= n.index < WIDTHS[n.site] for n in got)
    assert all(n.score == 0.0 for n in got)
    assert got.method == "random" and got.model == "tiny" and got.sources == {"neur": "abc"}
    assert got.params == dict(seed=3, match="site", like="general", size=7, exclude=False)
    assert random_like(SOURCE, widths, seed=3) == got
    assert random_like(SOURCE, widths, seed=4).pairs != got.pairs


def test_random_like_kind_and_none():
    by_kind = random_like(SOURCE, WIDTHS, seed=0, match="kind")
    assert by_kind.counts_by_kind() == {"mlp": 4, "attn": 3}
    assert by_kind == random_like(SOURCE, WIDTHS, seed=0, match="kind")
    anywhere = random_like(SOURCE, WIDTHS, seed=0, match="none")
    assert len(anywhere) == 7
    assert anywhere.params["match"] == "none"
    # Over many seeds the draws cover every site of the kind (kind) / of the model (none) in proportion to width.
    kind_sites, none_mlp, total = {}, 0, 0
    for seed in range(150):
        for n in random_like(SOURCE, WIDTHS, seed=seed, match="kind"):
            kind_sites[n.site] = kind_sites.get(n.site, 0) + 1
        drawn = random_like(SOURCE, WIDTHS, seed=seed, match="none")
        none_mlp += drawn.counts_by_kind()["mlp"]
        total += len(drawn)
    assert set(kind_sites) == set(WIDTHS)
    # attention sites: 3 draws per seed spread over q (16), k (8), v (8) of two layers: q gets ~ 1/2.
    attn_q = kind_sites["layers.0.self_attn.q_proj"] + kind_sites["layers.1.self_attn.q_proj"]
    assert abs(attn_q / (3 * 150) - 0.5) < 0.08
    assert abs(none_mlp / total - 80 / 144) < 0.06  # MLP holds 80 of the 144 neurons


def test_random_like_model_widths():
    from tests.fixtures import tiny_model

    model = tiny_model("llama")
    got = random_like(SOURCE, model, seed=1)
    assert per_site(got) == per_site(SOURCE)
    assert all(n.index < (48 if "mlp" in n.site else 32 if "q_proj" in n.site else 16) for n in got)


def test_random_like_exclude():
    site = "layers.0.self_attn.k_proj"
    exclude = NeuronSet.from_pairs([(site, i) for i in range(6)] + [("layers.0.mlp.gate_proj", 0)])
    for seed in range(20):
        got = random_like(SOURCE, WIDTHS, seed=seed, exclude=exclude)
        assert not set(got.pairs) & set(exclude.pairs)
        # k_proj has width 8; with 6 excluded exactly indices 6 and 7 remain for its 2 draws.
        assert sorted(i for s, i in got.pairs if s == site) == [6, 7]
    assert got.params["exclude"] is True
    too_many = NeuronSet.from_pairs([(site, i) for i in range(7)])
    with pytest.raises(ValueError, match=r"site 'layers.0.self_attn.k_proj': cannot draw 2 neurons from 1"):
        random_like(SOURCE, WIDTHS, seed=0, exclude=too_many)
    # Drawing outside the set itself, per kind.
    disjoint = random_like(SOURCE, WIDTHS, seed=5, match="kind", exclude=SOURCE)
    assert not set(disjoint.pairs) & set(SOURCE.pairs)


def test_random_like_errors():
    with pytest.raises(ValueError, match="match"):
        random_like(SOURCE, WIDTHS, seed=0, match="layer")
    with pytest.raises(ValueError, match="seed"):
        random_like(SOURCE, WIDTHS, seed=1.5)
    with pytest.raises(ValueError, match=r"'layers.1.mlp.gate_proj'.*index 30.*width 20"):
        random_like(SOURCE, {**WIDTHS, "layers.1.mlp.gate_proj": 20}, seed=0)
