"""Part-labelled scoring, collapsing parts, Jaccard overlap and the stability measure, against hand-built tables."""
from __future__ import annotations

import pytest
import torch

from culnig_ext import score
from culnig_ext.selection.neurons import Neuron, NeuronSet
from culnig_ext.selection.stability import SEP, UNSTABLE_BELOW, collapse, jaccard, label_parts, measure, scopes
from culnig_ext.scoring.table import ScoreTable
from tests.fixtures import random_items, tiny_model

SITES = {"layers.0.mlp.gate_proj": 4, "layers.1.mlp.gate_proj": 4, "layers.2.self_attn.q_proj": 4}


def test_label_parts_balanced_and_deterministic():
    items = random_items(23, seed=1)
    a, b = label_parts(items, 4, seed=5), label_parts(items, 4, seed=5)
    assert a == b and a != label_parts(items, 4, seed=6)
    parts = [int(x["group"].split(SEP)[1]) for x in a]
    assert sorted(parts.count(k) for k in range(4)) == [5, 6, 6, 6]
    assert [x["group"].split(SEP)[0] for x in a] == [x["group"] for x in items]
    assert [x["id"] for x in a] == [x["id"] for x in items]
    with pytest.raises(ValueError, match="already holds a part label"):
        label_parts(a, 2, seed=0)


def test_collapse_by_hand():
    site = "layers.0.mlp.gate_proj"
    rows = torch.tensor([[1.0, 2.0], [10.0, 20.0], [100.0, 200.0], [5.0, 7.0]], dtype=torch.float64)
    t = ScoreTable([f"US{SEP}0", f"US{SEP}1", f"UK{SEP}1", f"UK{SEP}2"], [1, 2, 3, 4], {site: rows},
                   [0.5, 1.0, 1.5, 2.0], {"model": "m"})
    full = collapse(t)
    assert full.groups == ["US", "UK"] and full.counts.tolist() == [3, 7]
    assert full[site].tolist() == [[11.0, 22.0], [105.0, 207.0]] and full.prob_sums.tolist() == [1.5, 3.5]
    assert full.metadata["model"] == "m"
    w = collapse(t, [2, 0, 1])  # part 0 twice, part 1 dropped
    assert w.groups == ["US", "UK"] and w.counts.tolist() == [2, 4]
    assert w[site].tolist() == [[2.0, 4.0], [5.0, 7.0]] and w.prob_sums.tolist() == [1.0, 2.0]
    only_uk = collapse(t, [0, 1, 1])
    assert only_uk.groups == ["US", "UK"] and only_uk.counts.tolist() == [2, 7]
    assert collapse(t, [1, 0, 0]).groups == ["US"]  # UK has no item in part 0
    with pytest.raises(ValueError, match="3 non-negative integers"):
        collapse(t, [1, 1])


def test_part_tables_add_up_to_the_ordinary_table():
    model = tiny_model("llama", dtype=torch.float64)
    items = random_items(20, seed=3, groups=("US", "UK"))
    plain = score(model, items, batch_size=4, progress=False)
    parted = score(model, label_parts(items, 5, seed=0), batch_size=4, progress=False)
    back = collapse(parted)
    assert back.groups == plain.groups and torch.equal(back.counts, plain.counts)
    for site in plain.sites:
        torch.testing.assert_close(back[site], plain[site], rtol=1e-10, atol=1e-12)


def table_from_items(per_item: list[tuple[str, int, dict[str, list[float]]]]) -> ScoreTable:
    """A part-labelled table from per-item scores: (group, part, {site: scores})."""
    labels = list(dict.fromkeys(f"{g}{SEP}{p}" for g, p, _ in per_item))
    sums = {s: torch.zeros(len(labels), w, dtype=torch.float64) for s, w in SITES.items()}
    counts = torch.zeros(len(labels), dtype=torch.int64)
    for g, p, scores in per_item:
        r = labels.index(f"{g}{SEP}{p}")
        counts[r] += 1
        for s, v in scores.items():
            sums[s][r] += torch.tensor(v, dtype=torch.float64)
    return ScoreTable(labels, counts, sums, counts.double())


def top2(tables) -> NeuronSet:
    """A stand-in selection: the 2 neurons with the highest summed neur score."""
    t = tables["neur"]
    flat = [(float(t[s].sum(0)[i]), s, i) for s in t.sites for i in range(t[s].shape[1])]
    flat.sort(key=lambda x: (-x[0], x[1], x[2]))
    return NeuronSet([Neuron(s, i, v) for v, s, i in flat[:2]], method="general")


def test_measure_agreeing_and_disagreeing_halves():
    zero = {s: [0.0] * w for s, w in SITES.items()}
    mlp0, attn = "layers.0.mlp.gate_proj", "layers.2.self_attn.q_proj"
    # every part prefers the same neurons (mlp0[1], attn[3]): split-half and bootstrap Jaccard 1
    same = [("US", p, {**zero, mlp0: [0, 5, 0, 0], attn: [0, 0, 0, 4]}) for p in range(4)]
    res = measure(top2, {"neur": table_from_items(same)}, SITES, n_boot=3, seed=0)
    by = {r.scope: r for r in res.rows}
    assert by["all neurons"].split_half == 1.0 and by["all neurons"].boot_mean == 1.0 and res.warning is None
    assert by["MLP gate"].n_full == 1 and by["attention q/k/v"].n_full == 1
    # chance level of two 1-neuron sets among the 8 MLP neurons: (1/8) / (2 - 1/8)
    assert by["MLP gate"].chance == pytest.approx((1 / 8) / (2 - 1 / 8))
    assert [r.scope for r in res.rows] == ["all neurons", "MLP gate", "attention q/k/v", "layers 0-0", "layers 1-1",
                                           "layers 2-2"]
    # parts 0-1 (half A) prefer mlp0[0], mlp0[1]; parts 2-3 (half B) prefer attn[0], attn[1]: Jaccard 0, a warning
    split = [("US", p, {**zero, mlp0: [3, 2, 0, 0]}) for p in (0, 1)]
    split += [("US", p, {**zero, attn: [4, 1, 0, 0]}) for p in (2, 3)]
    res = measure(top2, {"neur": table_from_items(split)}, SITES, n_boot=0)
    assert res.rows[0].split_half == 0.0 and res.rows[0].n_half_a == 2 and res.rows[0].n_half_b == 2
    assert res.warning and "unstable" in res.warning and f"{UNSTABLE_BELOW}" in res.warning
    assert "Warning" in res.to_markdown()


def test_jaccard_and_scopes_by_hand():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard(set(), {1}) == 0.0
    assert jaccard(set(), set()) != jaccard(set(), set())  # nan
    widths = {f"layers.{i}.mlp.gate_proj": 10 for i in range(6)} | {f"layers.{i}.self_attn.k_proj": 2 for i in range(6)}
    got = {name: n for name, _, n in scopes(widths)}
    assert got == {"all neurons": 72, "MLP gate": 60, "attention q/k/v": 12, "layers 0-1": 24, "layers 2-3": 24,
                   "layers 4-5": 24}
