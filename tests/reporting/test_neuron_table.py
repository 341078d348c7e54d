"""The explorer's neuron table against sums divided by hand (tests/reporting/run_folder.py's small integers)."""
from __future__ import annotations

import math

import pytest

from culnig_ext.reporting.neuron_table import neuron_rows
from tests.reporting.run_folder import ATTN, COUNTS, CRC, CTRL, MLP, NEUR, general_set, specific_sets, table

ORDER = [(MLP, i) for i in range(4)] + [(ATTN, i) for i in range(3)]


def expected(site, i):
    """score, control, crc, per-group contrast (totals as divisors) and z, written out by hand."""
    n_total, c_total, r_total = sum(COUNTS["neur"]), sum(COUNTS["ctrl"]), sum(COUNTS["crc"])
    score = sum(NEUR[site][g][i] for g in range(3)) / n_total
    control = sum(CTRL[site][g][i] for g in range(3)) / c_total
    crc = sum(CRC[site][g][i] for g in range(3)) / r_total
    per_group = [NEUR[site][g][i] / n_total - CTRL[site][g][i] / c_total for g in range(3)]
    mean = sum(per_group) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in per_group) / 3)
    z = [0.0 if sd == 0 else (x - mean) / sd for x in per_group]
    return score, control, crc, per_group, z


def test_every_neuron_with_top_n_covering_all():
    rows = neuron_rows(table(NEUR, COUNTS["neur"]), table(CTRL, COUNTS["ctrl"]), table(CRC, COUNTS["crc"]),
                       general_set(), specific_sets(), top_n=100)
    assert rows["groups"] == ["US", "UK", "Spain"] and rows["n_neurons"] == 7
    got = [(rows["sites"][s], i) for s, i in zip(rows["site"], rows["index"])]
    assert sorted(got) == sorted(ORDER)
    contrasts = [expected(*k)[0] - expected(*k)[1] for k in got]
    assert contrasts == sorted(contrasts, reverse=True)  # highest contrast first
    for r, key in enumerate(got):
        score, control, crc, per_group, z = expected(*key)
        assert rows["score"][r] == pytest.approx(score, rel=1e-6)
        assert rows["control"][r] == pytest.approx(control, rel=1e-6)
        assert rows["crc"][r] == pytest.approx(crc, rel=1e-6)
        assert rows["contrast"][r] == pytest.approx(score - control, rel=1e-6, abs=1e-12)
        assert rows["group_scores"][r] == pytest.approx(per_group, rel=1e-6, abs=1e-12)
        assert rows["z"][r] == pytest.approx(z, rel=1e-5, abs=1e-12)
        assert rows["layer"][r] == (0 if key[0] == MLP else 1)
        assert rows["kind"][r] == ("mlp" if key[0] == MLP else "attn")
        assert rows["general"][r] == int(key in {(MLP, 0), (ATTN, 2)})
        spec = {(MLP, 0): ["US"], (ATTN, 2): ["Spain"], (MLP, 1): ["Spain"]}.get(key, [])
        assert [rows["groups"][g] for g in rows["specific"][r]] == spec


def test_top_n_adds_the_highest_contrast_others_only():
    rows = neuron_rows(table(NEUR, COUNTS["neur"]), table(CTRL, COUNTS["ctrl"]), None, general_set(),
                       specific_sets(), top_n=1)
    got = {(rows["sites"][s], i) for s, i in zip(rows["site"], rows["index"])}
    in_sets = {(MLP, 0), (ATTN, 2), (MLP, 1)}
    others = [k for k in ORDER if k not in in_sets]
    best = max(others, key=lambda k: expected(*k)[0] - expected(*k)[1])
    assert got == in_sets | {best}
    assert rows["crc"] is None  # no CountryRC table given


def test_without_tables_the_rows_are_the_sets():
    rows = neuron_rows(None, None, None, general_set(), specific_sets(), top_n=10)
    got = [(rows["sites"][s], i, c) for s, i, c in zip(rows["site"], rows["index"], rows["contrast"])]
    # each neuron once, scored by its first set (general before specific), highest first
    assert got == [(ATTN, 2, 0.75), (MLP, 1, 0.75), (MLP, 0, 0.5)]
    assert rows["score"] == [None] * 3 and rows["z"] is None


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_top_n_must_be_a_whole_number(bad):
    with pytest.raises(ValueError, match="top_n must be a non-negative integer"):
        neuron_rows(None, None, None, general_set(), {}, top_n=bad)
