"""Validation's pieces on hand-built tables: per-item tables added up by country (and resampled) as written out
here, the continuous scores agreeing with the real selection functions, subsets and resamples balanced over
countries, and a bad planted folder refused naming the file and field."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from culnig_ext.data.schema import SchemaError
from culnig_ext.scoring.table import ScoreTable
from culnig_ext.selection import culnig as select
from culnig_ext.studies.ground_truth_config import ValidateConfig
from culnig_ext.studies.validate import (
    balanced_subset,
    collapse,
    crc_drops,
    general_scores,
    parse_sizes,
    prepare,
    read_planted,
    specific_scores,
    stratified_weights,
    table_weights,
    universe_of,
    Scores,
)

COUNTRIES = ["A", "B", "C"]
WIDTHS = {"layers.0.mlp.gate_proj": 30, "layers.0.self_attn.q_proj": 8, "layers.1.mlp.gate_proj": 30,
          "layers.1.self_attn.q_proj": 8}


def table(groups, seed, *, nonneg=False):
    g = torch.Generator().manual_seed(seed)
    sums = {s: torch.rand(len(groups), w, generator=g, dtype=torch.float64) - (0.0 if nonneg else 0.3)
            for s, w in WIDTHS.items()}
    return ScoreTable(groups, [1] * len(groups), sums, torch.rand(len(groups), dtype=torch.float64), {"model": "m"})


ROW_COUNTRY = ["A", "A", "B", "C", "B", "A", "C"]


def test_collapse_by_hand():
    per_item = table([f"i{k}" for k in range(7)], 0)
    w = np.array([2, 0, 1, 1, 3, 1, 0])
    out = collapse(per_item, ROW_COUNTRY, COUNTRIES, w)
    site = "layers.1.mlp.gate_proj"
    rows = per_item[site]
    want_a = 2 * rows[0] + 0 * rows[1] + rows[5]
    want_b = rows[2] + 3 * rows[4]
    want_c = rows[3]
    torch.testing.assert_close(out[site], torch.stack([want_a, want_b, want_c]), rtol=0, atol=1e-15)
    assert out.counts.tolist() == [3, 4, 1] and out.groups == COUNTRIES
    full = collapse(per_item, ROW_COUNTRY, COUNTRIES, None, sites=[site])
    assert full.sites == [site] and full.counts.tolist() == [3, 2, 2]


def culnig_tables():
    items = [f"i{k}" for k in range(7)]
    neur = collapse(table(items, 1), ROW_COUNTRY, COUNTRIES, None)
    ctrl = collapse(table(items, 2, nonneg=True), ROW_COUNTRY, COUNTRIES, None)
    crc = table(COUNTRIES, 3)
    return {"neur": neur, "ctrl": ctrl, "crc": crc}


def lape_table():
    """An activation-probability table of the MLP sites (counts of active tokens out of 10 per country)."""
    g = torch.Generator().manual_seed(4)
    sums = {s: torch.randint(0, 11, (3, w), generator=g).to(torch.float64) for s, w in WIDTHS.items() if ".mlp." in s}
    return ScoreTable(COUNTRIES, [2, 2, 2], sums, torch.full((3,), 10.0, dtype=torch.float64),
                      {"method": "activation_probability"})


CFG = ValidateConfig(t_mlp=0.2, r_mlp=0.1, t_specific=0.15, r_specific=0.05, z_min=0.5)


def mlp_part(ns):
    return {(n.site, n.index) for n in ns if ".mlp." in n.site}


@pytest.mark.parametrize("method, ctrl, crc, normalize", [("culnig", True, True, "count"), ("prob", True, True, "prob"),
                                                          ("no_control", False, True, "count"),
                                                          ("no_crc", True, False, "count"), ("raw", False, False, "count")])
def test_general_scores_rank_like_select_general(method, ctrl, crc, normalize):
    """The top of the continuous score is the selected set: general()'s MLP part has k neurons, and they are the top
    k of the score (CountryRC-removed neurons ranked last)."""
    t = culnig_tables()
    uni = universe_of(t["neur"])
    drops = crc_drops(t["crc"], uni, CFG, COUNTRIES)
    t["lape"] = lape_table()
    score = general_scores(prepare(t, uni, CFG), method, np.random.default_rng(0), drops)
    chosen = select.general(t["neur"], t["ctrl"] if ctrl else None, t["crc"] if crc else None, CFG.t_mlp, 0.0,
                            CFG.r_mlp, 0.0, normalize=normalize)
    want = mlp_part(chosen)
    top = {uni.pair(p) for p in np.argsort(-score, kind="stable")[:len(want)]}
    assert top == want
    if crc:
        assert len(want) <= 12 and drops["general"].sum() == 6  # floor(60 * 0.2) = 12 chosen, floor(60 * 0.1) = 6 removed
    else:
        assert len(want) == 12


@pytest.mark.parametrize("method, ctrl, crc, z, normalize", [
    ("culnig", True, True, 0.5, "total"), ("prob", True, True, 0.5, "prob"), ("no_control", False, True, 0.5, "total"),
    ("no_crc", True, False, 0.5, "total"), ("raw", False, False, None, "total")])
@pytest.mark.parametrize("country", COUNTRIES)
def test_specific_scores_rank_like_select_specific(method, ctrl, crc, z, normalize, country):
    t = culnig_tables()
    uni = universe_of(t["neur"])
    drops = crc_drops(t["crc"], uni, CFG, COUNTRIES)
    t["lape"] = lape_table()
    score = specific_scores(prepare(t, uni, CFG), method, country, CFG, np.random.default_rng(0), drops)
    chosen = select.specific(t["neur"], t["ctrl"] if ctrl else None, t["crc"] if crc else None, country,
                             CFG.t_specific, CFG.r_specific, z, normalize=normalize)
    want = mlp_part(chosen)
    top = {uni.pair(p) for p in np.argsort(-score, kind="stable")[:len(want)]}
    assert top == want


def test_stratified_weights_keep_each_country_size():
    rng = np.random.default_rng(0)
    for _ in range(20):
        w = stratified_weights(ROW_COUNTRY, rng)
        assert w.sum() == 7
        for c in COUNTRIES:
            assert sum(w[i] for i, rc in enumerate(ROW_COUNTRY) if rc == c) == ROW_COUNTRY.count(c)


def test_balanced_subset():
    rows = ["A"] * 10 + ["B"] * 10 + ["C"] * 3
    w = balanced_subset(rows, 7, np.random.default_rng(1))
    per = {c: int(sum(w[i] for i, r in enumerate(rows) if r == c)) for c in "ABC"}
    assert w.sum() == 7 and sorted(per.values()) == [2, 2, 3]
    w = balanced_subset(rows, 20, np.random.default_rng(1))
    assert {c: int(sum(w[i] for i, r in enumerate(rows) if r == c)) for c in "ABC"} == {"A": 9, "B": 8, "C": 3}


def test_parse_sizes():
    assert parse_sizes("25,50,100,200,400", 192) == [25, 50, 100]
    with pytest.raises(ValueError, match="--sample-sizes"):
        parse_sizes("a,b", 10)


def test_read_planted_refuses_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="planted.json is missing"):
        read_planted(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "planted.json").write_text("{not json")
    with pytest.raises(SchemaError, match="planted.json, line 1: invalid JSON"):
        read_planted(tmp_path)
    (tmp_path / "planted.json").write_text(json.dumps({"format": "culnig-planted/1"}))
    with pytest.raises(SchemaError, match="planted.json: field 'neurons': missing"):
        read_planted(tmp_path)


def test_lape_scores_rank_like_lape_select():
    """LAPE's sets hold only neurons among its lowest-entropy top_rate share: the top of minus the entropy."""
    from culnig_ext.selection import lape

    t = culnig_tables()
    t["lape"] = lape_table()
    uni = universe_of(t["neur"])
    cfg = ValidateConfig(top_rate=0.1, filter_rate=0.5, activation_bar_ratio=0.5)
    prep = prepare(t, uni, cfg)
    score = general_scores(prep, "lape", np.random.default_rng(0), crc_drops(t["crc"], uni, cfg, COUNTRIES))
    sets = lape.select(t["lape"], top_rate=0.1, filter_rate=0.5, activation_bar_ratio=0.5)
    union = set().union(*({(n.site, n.index) for n in ns} for ns in sets.values()))
    assert union
    n_keep = round(60 * 0.1)
    assert union <= {uni.pair(p) for p in np.argsort(-score, kind="stable")[:n_keep]}


def test_table_weights_by_hand():
    """Mean P per table and the control's / reading items' summed MLP scores per item as shares of the scoring
    items', written out from two tiny tables."""
    mlp = {"layers.0.mlp.gate_proj": 2, "layers.0.self_attn.q_proj": 1}
    neur = ScoreTable(["i0", "i1"], [1, 1], {"layers.0.mlp.gate_proj": torch.tensor([[1.0, 3.0], [2.0, 2.0]]),
                                              "layers.0.self_attn.q_proj": torch.tensor([[100.0], [100.0]])},
                      torch.tensor([0.9, 0.7]), {"model": "m"})
    ctrl = ScoreTable(["i0", "i1"], [1, 1], {"layers.0.mlp.gate_proj": torch.tensor([[0.5, 0.0], [0.0, 0.5]]),
                                              "layers.0.self_attn.q_proj": torch.tensor([[7.0], [7.0]])},
                      torch.tensor([0.1, 0.3]), {"model": "m"})
    crc = ScoreTable(["A"], [4], {"layers.0.mlp.gate_proj": torch.tensor([[4.0, 0.0]]),
                                  "layers.0.self_attn.q_proj": torch.tensor([[9.0]])},
                     torch.tensor([2.0]), {"model": "m"})
    assert set(mlp) == set(neur.sites)
    scores = Scores(neur, ctrl, crc, neur, ["A", "A"], ["A"])
    w = table_weights(scores, universe_of(neur))
    assert w["mean_p_neur"] == pytest.approx(0.8) and w["mean_p_ctrl"] == pytest.approx(0.2)
    assert w["mean_p_crc"] == pytest.approx(0.5)
    # per item over the MLP sites: neur (1+3+2+2)/2 = 4, ctrl (0.5+0.5)/2 = 0.5, crc 4/4 = 1
    assert w["ctrl_share"] == pytest.approx(0.5 / 4) and w["crc_share"] == pytest.approx(1 / 4)
