"""Results as data: ScoreTable, NeuronSet and EvalResult to pandas (and xarray) and back, checked cell by cell."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from culnig_ext.intervention.evaluate import EvalResult, ItemRecord
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.scoring.table import ScoreTable

G0, Q1, K1 = "layers.0.mlp.gate_proj", "layers.1.self_attn.q_proj", "layers.1.self_attn.k_proj"


def table():
    g = torch.Generator().manual_seed(0)
    sums = {G0: torch.randn(3, 5, generator=g, dtype=torch.float64), Q1: torch.randn(3, 4, generator=g, dtype=torch.float64)}
    return ScoreTable(["US", "JP", "DE"], [4, 2, 5], sums, [1.5, 0.5, 2.0], {"model": "tiny", "clamp_min": ""})


def test_score_table_long_format_and_round_trip():
    t = table()
    df = t.to_pandas()
    assert list(df.columns) == ["site", "layer", "kind", "index", "group", "score"]
    assert len(df) == 3 * 5 + 3 * 4
    row = df[(df.site == Q1) & (df.group == "JP") & (df["index"] == 2)]
    assert len(row) == 1 and row.iloc[0].layer == 1 and row.iloc[0].kind == "attn"
    assert row.iloc[0].score == t[Q1][1, 2].item()
    assert df[(df.site == G0)].kind.unique().tolist() == ["mlp"]
    back = ScoreTable.from_pandas(df)
    assert back.groups == t.groups and back.sites == t.sites and back.metadata == t.metadata
    assert torch.equal(back.counts, t.counts) and torch.equal(back.prob_sums, t.prob_sums)
    for site in t.sites:
        assert torch.equal(back[site], t[site])
    assert back.fingerprint() == t.fingerprint()
    # a pivot gives the per-group view a notebook wants
    wide = df[df.site == G0].pivot(index="index", columns="group", values="score")
    assert wide.loc[3, "DE"] == t[G0][2, 3].item()


def test_score_table_normalised_and_gaps_refused():
    t = table()
    df = t.to_pandas(normalize="count")
    row = df[(df.site == G0) & (df.group == "DE") & (df["index"] == 4)].iloc[0]
    assert row.score == pytest.approx(t[G0][2, 4].item() / 5)
    with pytest.raises(ValueError, match="normalised by 'count'"):
        ScoreTable.from_pandas(df)
    gap = t.to_pandas().drop(index=3)
    with pytest.raises(ValueError, match=f"site '{G0}': expected one row per group and neuron"):
        ScoreTable.from_pandas(gap)


def test_score_table_to_xarray():
    t = table()
    ds = t.to_xarray()
    assert ds[G0].dims == ("group", f"{G0}/index")
    assert ds[Q1].sel(group="DE").values.tolist() == t[Q1][2].tolist()
    assert ds["counts"].sel(group="JP").item() == 2 and ds.attrs["model"] == "tiny"
    assert ds[G0].sel(group="US").values[1] == pytest.approx(t[G0][0, 1].item())
    assert t.to_xarray(normalize="prob")[G0].sel(group="JP").values[0] == pytest.approx(t[G0][1, 0].item() / 0.5)


def test_neuron_set_long_format_and_round_trip():
    ns = NeuronSet.from_pairs([(Q1, 3, 0.25), (G0, 7, 1.5), (K1, 0, -0.5)], method="specific",
                              params={"group": "JP", "t": 0.003}, model="tiny", sources={"neur": "abc"})
    df = ns.to_pandas()
    assert df.values.tolist() == [
        [G0, 0, "mlp", 7, "JP", 1.5], [Q1, 1, "attn", 3, "JP", 0.25], [K1, 1, "attn", 0, "JP", -0.5]]
    assert NeuronSet.from_pandas(df) == ns
    # filtering in pandas gives a set back
    mlp = NeuronSet.from_pandas(df[df.kind == "mlp"])
    assert mlp.pairs == [(G0, 7)] and mlp.method == "specific"
    assert "3 neurons" in ns._repr_html_() and "<table" in ns._repr_html_()


def test_eval_result_records_round_trip():
    records = [
        ItemRecord("a", "US", 1, 1, True, [-1.0, -0.5, float("-inf")], predicted_token=65),
        ItemRecord("b", "JP", 0, None, False, [-2.0, -0.1, -3.0], predicted_token=12),
        ItemRecord("c", "JP", 2, 0, False, [-0.2, -0.9, -0.3], alignment=62.5),
    ]
    res = EvalResult(records, "letter", restrict_to_choices=False, control=None, metadata={"model": "tiny"})
    df = res.to_pandas()
    assert len(df) == 3 and df.loc[1, "id"] == "b" and df.loc[1, "group"] == "JP" and not df.loc[1, "correct"]
    assert df.groupby("group")["correct"].mean().to_dict() == res.per_group
    assert df.loc[0, "option_scores"][2] == float("-inf") and df.loc[2, "alignment"] == 62.5
    back = EvalResult.from_pandas(df)
    assert back.to_dict() == res.to_dict()
    assert back.records[1].pred is None and math.isinf(back.records[0].option_scores[2])
    assert "accuracy 0.333" in res._repr_html_()


def test_table_html_names_groups_and_counts():
    html = table()._repr_html_()
    assert "3 groups, 11 items, 2 sites, 9 neurons" in html and "<td>JP</td>" in html
