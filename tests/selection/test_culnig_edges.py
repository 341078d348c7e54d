"""Edges of select.py that the mutation check found unguarded: each test states its expectation by hand."""
from __future__ import annotations

import pytest

from culnig_ext.selection.neurons import Neuron, NeuronSet
from culnig_ext.selection.culnig import random_like

# 2 MLP sites (80 neurons) and 4 attention sites (64 neurons): 144 in all.
WIDTHS = {
    "layers.0.mlp.gate_proj": 40,
    "layers.0.self_attn.q_proj": 16,
    "layers.0.self_attn.k_proj": 16,
    "layers.1.mlp.gate_proj": 40,
    "layers.1.self_attn.q_proj": 16,
    "layers.1.self_attn.v_proj": 16,
}
# 4 MLP neurons, 3 attention neurons, all in layer 0.
SOURCE = NeuronSet(
    [Neuron("layers.0.mlp.gate_proj", i, 1.0) for i in (1, 5, 9, 11)]
    + [Neuron("layers.0.self_attn.k_proj", i, 0.5) for i in (0, 7, 8)],
    method="general", model="tiny",
)


def kinds(neuron_set):
    mlp = sum(1 for n in neuron_set if ".mlp." in n.site)
    return mlp, len(neuron_set) - mlp


def test_random_like_kind_keeps_the_kind_counts_and_none_does_not():
    # match="kind": exactly 4 MLP and 3 attention neurons for every seed, spread over the sites of each kind.
    kind_counts = {kinds(random_like(SOURCE, WIDTHS, seed=s, match="kind")) for s in range(60)}
    assert kind_counts == {(4, 3)}
    sites = {n.site for s in range(60) for n in random_like(SOURCE, WIDTHS, seed=s, match="kind")}
    assert sites == set(WIDTHS)
    # match="none": 7 drawn over all 144 neurons, so the MLP count is hypergeometric (80 of 144, 7 draws);
    # P(exactly 4 MLP) = C(80,4) C(64,3) / C(144,7) ~ 0.30, so 60 seeds all giving 4 would be ~1e-31.
    none_counts = [kinds(random_like(SOURCE, WIDTHS, seed=s, match="none")) for s in range(60)]
    assert all(sum(c) == 7 for c in none_counts)
    assert len(set(none_counts)) >= 3
    # match="site": every draw stays on the source's two sites, 4 and 3.
    for s in range(10):
        got = random_like(SOURCE, WIDTHS, seed=s, match="site")
        assert sorted(n.site for n in got) == ["layers.0.mlp.gate_proj"] * 4 + ["layers.0.self_attn.k_proj"] * 3


def test_random_like_none_too_few_names_the_model():
    # Everything but 5 neurons excluded: "none" cannot draw 7 and says so for the whole model.
    keep = {("layers.1.self_attn.v_proj", i) for i in range(5)}
    exclude = NeuronSet.from_pairs([(s, i) for s, w in WIDTHS.items() for i in range(w) if (s, i) not in keep])
    with pytest.raises(ValueError, match=r"^the model: cannot draw 7 neurons from 5 available$"):
        random_like(SOURCE, WIDTHS, seed=0, match="none", exclude=exclude)
    with pytest.raises(ValueError, match=r"^kind 'mlp': cannot draw 4 neurons from 0 available$"):
        random_like(SOURCE, WIDTHS, seed=0, match="kind", exclude=exclude)


# ------------------------------------------------------------------------------------------------ specific
import math  # noqa: E402

import torch  # noqa: E402

from culnig_ext.selection.culnig import specific  # noqa: E402
from culnig_ext.scoring.table import ScoreTable  # noqa: E402

SITE = "layers.0.mlp.gate_proj"


def two_group_table(a_row, b_row, counts=(2, 2)):
    sums = {SITE: torch.tensor([a_row, b_row], dtype=torch.float64)}
    return ScoreTable(["A", "B"], list(counts), sums, torch.tensor([1.0, 1.0], dtype=torch.float64), {"model": "m"})


def test_specific_default_z_min_is_one_half():
    # Two groups: the target's z-score is +1 wherever it is the higher one ((5 - 2.5) / 2.5), so the default
    # z_min 0.5 keeps the top neuron (t = 0.1 of 10: one neuron). Score: 5 / total count 4.
    neur = two_group_table([5.0] + [0.0] * 9, [0.0] * 10)
    got = specific(neur, None, None, "A", t=0.1, r=0.0)
    assert [(n.site, n.index, n.score) for n in got] == [(SITE, 0, 1.25)]
    assert got.params["z_min"] == 0.5
    assert got.model == "m" and got.method == "specific"
    assert len(specific(neur, None, None, "A", t=0.1, r=0.0, z_min=1.01)) == 0


def test_specific_refuses_bad_r_and_non_finite_contrast():
    neur = two_group_table([1.0] * 10, [0.0] * 10)
    with pytest.raises(ValueError, match=r"^r must be a fraction in \[0, 1\], got 1\.5$"):
        specific(neur, None, None, "A", t=0.1, r=1.5)
    # Finite sums whose contrast overflows: 1e308 - (-1e308) is inf in float64.
    big = two_group_table([1e308] * 10, [1e308] * 10, counts=(1, 1))
    ctrl = two_group_table([-1e308] * 10, [-1e308] * 10, counts=(1, 1))
    with pytest.raises(ValueError,
                       match=r"^site 'layers\.0\.mlp\.gate_proj': the per-group contrast scores hold NaN or inf$"):
        specific(big, ctrl, None, "A", t=0.1, r=0.0, normalize="count")


def test_specific_names_the_table_at_fault():
    neur = two_group_table([1.0] * 10, [0.0] * 10)
    other = ScoreTable(["A", "B"], [2, 2], {"layers.0.mlp.gate_proj": torch.zeros(2, 12, dtype=torch.float64)},
                       torch.ones(2, dtype=torch.float64), {"model": "m"})
    with pytest.raises(ValueError, match=r"^site 'layers\.0\.mlp\.gate_proj': width 10 in the neur table but 12 "
                                         r"in the ctrl table$"):
        specific(neur, other, None, "A", t=0.1, r=0.0)
    with pytest.raises(ValueError, match=r"^site 'layers\.0\.mlp\.gate_proj': width 10 in the neur table but 12 "
                                         r"in the crc table$"):
        specific(neur, None, other, "A", t=0.1, r=0.0)
    empty_b = two_group_table([1.0] * 10, [0.0] * 10, counts=(2, 0))
    with pytest.raises(ValueError, match=r"^the neur table has count normalizer 0\.0 for group 'B'; cannot divide$"):
        specific(empty_b, None, None, "A", t=0.1, r=0.0, normalize="count")


def test_specific_names_ctrl_and_crc_divisors_and_crc_overflow():
    neur = two_group_table([1.0] * 10, [0.0] * 10)
    empty_a = two_group_table([1.0] * 10, [0.0] * 10, counts=(0, 2))
    with pytest.raises(ValueError, match=r"^the ctrl table has count normalizer 0\.0 for group 'A'; cannot divide$"):
        specific(neur, empty_a, None, "A", t=0.1, r=0.0, normalize="count")
    with pytest.raises(ValueError, match=r"^the crc table has count normalizer 0\.0 for group 'A'; cannot divide$"):
        specific(neur, None, empty_a, "A", t=0.1, r=0.0, normalize="count")
    # CountryRC sums of 1e308 over a summed probability of 0.5: 2e308 overflows to inf.
    sums = {SITE: torch.tensor([[1e308] * 10, [0.0] * 10], dtype=torch.float64)}
    crc = ScoreTable(["A", "B"], [2, 2], sums, torch.tensor([0.5, 1.0], dtype=torch.float64), {"model": "m"})
    with pytest.raises(ValueError, match=r"^site 'layers\.0\.mlp\.gate_proj': the crc scores hold NaN or inf$"):
        specific(neur, None, crc, "A", t=0.1, r=0.0, normalize="prob")


def test_specific_single_group_has_z_zero():
    one = ScoreTable(["A"], [2], {SITE: torch.tensor([[3.0] + [0.0] * 9], dtype=torch.float64)},
                     torch.ones(1, dtype=torch.float64), {"model": "m"})
    got = specific(one, None, None, "A", t=0.1, r=0.0, z_min=0.0, normalize="none")
    assert [(n.site, n.index, n.score) for n in got] == [(SITE, 0, 3.0)]
    assert len(specific(one, None, None, "A", t=0.1, r=0.0, z_min=1e-300, normalize="none")) == 0


def test_specific_flat_tolerance_is_4_g_eps_times_the_neurons_own_max():
    eps = torch.finfo(torch.float64).eps
    # Two groups, normalize="none": S = the raw sums. A neuron's sd is half its A-B gap; the flat tolerance is
    # 4 * 2 * eps * max|S| = 8 eps (scale 1). Gap 18 eps: sd 9 eps > 8 eps, z = +1, kept. Gap 10 eps: sd 5 eps, flat,
    # z = 0, dropped (z_min 0.5).
    a = [1.0 + 18 * eps] * 3 + [1.0 + 10 * eps] + [0.0] * 6
    b = [1.0] * 4 + [0.0] * 6
    got = specific(two_group_table(a, b), None, None, "A", t=0.4, r=0.0, normalize="none")
    assert [(n.index, n.score) for n in got] == [(0, 1.0 + 18 * eps), (1, 1.0 + 18 * eps), (2, 1.0 + 18 * eps)]
    # The tolerance scales with each neuron's own magnitude: a 1e-20-scale neuron beside a 1e10-scale one keeps
    # its z-score of +1.
    a = [2e10, 2e-20] + [0.0] * 8
    b = [1e10, 1e-20] + [0.0] * 8
    got = specific(two_group_table(a, b), None, None, "A", t=0.2, r=0.0, normalize="none")
    assert [(n.index, n.score) for n in got] == [(0, 2e10), (1, 2e-20)]


def test_general_names_a_zero_total():
    from culnig_ext.selection.culnig import general

    zero = two_group_table([1.0] * 10, [0.0] * 10, counts=(0, 0))
    with pytest.raises(ValueError, match=r"^the neur table has total item count 0\.0; cannot normalize by it$"):
        general(zero, None, None, t_mlp=0.1, normalize="count")
    no_p = ScoreTable(["A", "B"], [2, 2], {SITE: torch.ones(2, 10, dtype=torch.float64)},
                      torch.zeros(2, dtype=torch.float64), {"model": "m"})
    with pytest.raises(ValueError, match=r"^the neur table has total summed probability \(prob_sums\) 0\.0; "
                                         r"cannot normalize by it$"):
        general(no_p, None, None, t_mlp=0.1, normalize="prob")


@pytest.mark.parametrize("name", ["t_mlp", "t_attn", "r_mlp", "r_attn"])
def test_general_names_the_bad_fraction(name):
    from culnig_ext.selection.culnig import general

    neur = two_group_table([1.0] * 10, [0.0] * 10)
    with pytest.raises(ValueError, match=rf"^{name} must be a fraction in \[0, 1\], got -0\.5$"):
        general(neur, None, None, **{name: -0.5})


def test_general_names_the_ctrl_and_contrast_tables():
    from culnig_ext.selection.culnig import general

    neur = two_group_table([1.0] * 10, [0.0] * 10)
    wide = ScoreTable(["A", "B"], [2, 2], {SITE: torch.zeros(2, 12, dtype=torch.float64)},
                      torch.ones(2, dtype=torch.float64), {"model": "m"})
    zero = two_group_table([1.0] * 10, [0.0] * 10, counts=(0, 0))
    for role in ("ctrl", "contrast"):
        kw = {"ctrl": None, "crc": None}
        kw["ctrl" if role == "ctrl" else "contrast"] = wide
        with pytest.raises(ValueError, match=rf"^site 'layers\.0\.mlp\.gate_proj': width 10 in the neur table but "
                                             rf"12 in the {role} table$"):
            general(neur, t_mlp=0.1, **kw)
        kw["ctrl" if role == "ctrl" else "contrast"] = zero
        with pytest.raises(ValueError, match=rf"^the {role} table has total item count 0\.0; cannot normalize by it$"):
            general(neur, t_mlp=0.1, **kw)


def test_general_crc_zero_total_and_attention_only_tables():
    from culnig_ext.selection.culnig import general

    neur = two_group_table([1.0] * 10, [0.0] * 10)
    zero = two_group_table([1.0] * 10, [0.0] * 10, counts=(0, 0))
    with pytest.raises(ValueError, match=r"^the crc table has total item count 0\.0; cannot normalize by it$"):
        general(neur, None, zero, t_mlp=0.1)
    # No MLP site at all: the attention neurons are still chosen (top 0.25 of 8 = 2: indices 6 and 2, listed in index order).
    q = "layers.0.self_attn.q_proj"
    sums = torch.tensor([[0, 1, 5, 0, 0, 0, 7, 0], [0, 0, 0, 0, 0, 0, 1, 0]], dtype=torch.float64)
    attn_only = ScoreTable(["A", "B"], [1, 1], {q: sums}, torch.ones(2, dtype=torch.float64), {"model": "m"})
    got = general(attn_only, None, None, t_attn=0.25, normalize="count")
    assert [(n.site, n.index, n.score) for n in got] == [(q, 2, 2.5), (q, 6, 4.0)]


def test_general_refuses_non_finite_contrast_and_crc():
    from culnig_ext.selection.culnig import general

    big = two_group_table([1e308] * 10, [0.0] * 10, counts=(1, 0))
    neg = two_group_table([-1e308] * 10, [0.0] * 10, counts=(1, 0))
    # (1e308 / 1) - (-1e308 / 1) overflows to inf.
    with pytest.raises(ValueError, match=r"^site 'layers\.0\.mlp\.gate_proj': the contrast scores hold NaN or inf$"):
        general(big, neg, None, t_mlp=0.1)
    # CountryRC sums of 1e308 over a total summed probability of 0.5: 2e308 overflows to inf.
    crc = ScoreTable(["A", "B"], [1, 1], {SITE: torch.tensor([[1e308] * 10, [0.0] * 10], dtype=torch.float64)},
                     torch.tensor([0.25, 0.25], dtype=torch.float64), {"model": "m"})
    ok = two_group_table([1.0] * 10, [0.0] * 10)
    with pytest.raises(ValueError, match=r"^site 'layers\.0\.mlp\.gate_proj': the crc scores hold NaN or inf$"):
        general(ok, None, crc, t_mlp=0.1, normalize="prob")


def test_a_table_without_model_gives_a_set_without_model():
    from culnig_ext.selection.culnig import general

    bare = ScoreTable(["A", "B"], [1, 1], {SITE: torch.tensor([[3.0] + [0.0] * 9, [0.0] * 10], dtype=torch.float64)},
                      torch.ones(2, dtype=torch.float64), {})
    assert general(bare, None, None, t_mlp=0.1).model == ""
    assert specific(bare, None, None, "A", t=0.1, r=0.0).model == ""


def test_top_fraction_names_its_fraction():
    from culnig_ext.selection.culnig import top_fraction

    with pytest.raises(ValueError, match=r"^fraction must be a fraction in \[0, 1\], got 2$"):
        top_fraction(torch.zeros(4), 2)
    assert top_fraction(torch.tensor([1.0, 3.0, 3.0, 2.0]), 0.75).tolist() == [1, 2, 3]
    assert top_fraction(torch.tensor([1.0, 3.0, 3.0, 2.0]), 0.25).tolist() == [1]
    with pytest.raises(ValueError, match=r"^fraction must be a fraction in \[0, 1\], got True$"):
        top_fraction(torch.zeros(4), True)
