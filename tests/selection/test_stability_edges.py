"""Stability edges: the part weights ``measure`` rebuilds tables with (full, two halves, seeded multinomial
bootstrap), its warning rule and text, the chance level of a one-neuron scope, layer bands of few layers,
``split_group``'s refusals and the exact markdown of a hand-built ``Stability``."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from culnig_ext.selection.neurons import Neuron, NeuronSet
from culnig_ext.selection.stability import SEP, Stability, StabilityRow, measure, scopes, split_group
from culnig_ext.scoring.table import ScoreTable

MLP0 = "layers.0.mlp.gate_proj"
ATTN1 = "layers.1.self_attn.q_proj"
SITES = {MLP0: 3, ATTN1: 1}


def part_table(per_part: list[dict[str, list[float]]], groups: list[str] | None = None) -> ScoreTable:
    """A part-labelled table with one row (one item) per part: part ``p`` in group ``groups[p]`` (default "US")."""
    groups = groups or ["US"] * len(per_part)
    labels = [f"{g}{SEP}{p}" for p, g in enumerate(groups)]
    sums = {s: torch.tensor([row.get(s, [0.0] * w) for row in per_part], dtype=torch.float64)
            for s, w in SITES.items()}
    counts = torch.ones(len(per_part), dtype=torch.int64)
    return ScoreTable(labels, counts, sums, counts.double())


def positive(tables) -> NeuronSet:
    """A stand-in selection: every neuron whose summed neur score is > 0."""
    t = tables["neur"]
    return NeuronSet([Neuron(s, i, float(v)) for s in t.sites for i, v in enumerate(t[s].sum(0).tolist()) if v > 0])


def test_measure_rebuilds_full_halves_and_seeded_bootstrap_weights():
    # part p is the only item of group "P<p>", so a collapsed table's counts are the part weights themselves
    table = part_table([{MLP0: [1.0, 0, 0]}] * 4, groups=["P0", "P1", "P2", "P3"])
    seen = []

    def record(tables):
        t = tables["neur"]
        got = dict(zip(t.groups, t.counts.tolist()))
        seen.append([got.get(f"P{p}", 0) for p in range(4)])
        return positive(tables)

    res = measure(record, {"neur": table}, SITES)  # defaults: 5 resamples, seed 0
    rng = np.random.default_rng(0)
    boots = [rng.multinomial(4, [0.25] * 4).tolist() for _ in range(5)]
    assert seen == [[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]] + boots
    assert all(sum(w) == 4 for w in boots) and boots != [[1, 1, 1, 1]] * 5
    assert (res.n_parts, res.n_boot) == (4, 5)
    seen.clear()
    measure(record, {"neur": table}, SITES, n_boot=2, seed=7)
    rng = np.random.default_rng(7)
    assert seen[3:] == [rng.multinomial(4, [0.25] * 4).tolist() for _ in range(2)]


def test_bootstrap_mean_and_min_by_hand():
    # mlp0[0] is positive in every part; mlp0[1] only in part 3 and strongly negative in part 0, so a resample
    # selects it when w3 * 5 - w0 * 6 > 0 (and the full table, 5 - 6 < 0, does not): Jaccard 1/2 then, 1 otherwise
    rows = [{MLP0: [1.0, -6.0, 0]}, {MLP0: [1.0, 0, 0]}, {MLP0: [1.0, 0, 0]}, {MLP0: [1.0, 5.0, 0]}]
    res = measure(positive, {"neur": part_table(rows)}, SITES, n_boot=6, seed=3)
    rng = np.random.default_rng(3)
    weights = [rng.multinomial(4, [0.25] * 4) for _ in range(6)]
    per_boot = [0.5 if w[3] * 5 - w[0] * 6 > 0 else 1.0 for w in weights]
    assert 0.5 in per_boot and 1.0 in per_boot  # this seed draws both cases
    row = res.rows[0]
    assert row.n_full == 1 and row.boot_mean == pytest.approx(sum(per_boot) / 6) and row.boot_min == 0.5


def test_split_half_only_gives_nan_bootstrap_without_numpy_warnings():
    rows = [{MLP0: [1.0, 0, 0]}] * 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.mean / np.min of no resamples would warn (or raise)
        res = measure(positive, {"neur": part_table(rows)}, SITES, n_boot=0)
    assert all(r.boot_mean != r.boot_mean and r.boot_min != r.boot_min for r in res.rows)
    assert res.rows[0].split_half == 1.0 and res.warning is None


def test_warning_rule_and_text_follow_the_overall_split_half():
    # half A (parts 0-1) selects {mlp0[0]}, half B (parts 2-3) {mlp0[0], mlp0[1]}: overall Jaccard exactly 0.5,
    # which is stable (the rule is "below 0.5")
    rows = [{MLP0: [1.0, 0, 0]}, {MLP0: [1.0, 0, 0]}, {MLP0: [1.0, 1.0, 0]}, {MLP0: [1.0, 0, 0]}]
    res = measure(positive, {"neur": part_table(rows)}, SITES, n_boot=0)
    assert res.rows[0].split_half == 0.5 and res.warning is None
    # A = {mlp0[0], attn[0]}, B = {mlp0[0], mlp0[1]}: overall 1/3 (unstable) although the MLP row is 1/2
    rows = [{MLP0: [1.0, 0, 0], ATTN1: [1.0]}, {MLP0: [1.0, 0, 0]}, {MLP0: [1.0, 1.0, 0]}, {MLP0: [1.0, 0, 0]}]
    res = measure(positive, {"neur": part_table(rows)}, SITES, n_boot=0)
    assert res.rows[1].scope == "MLP gate" and res.rows[1].split_half == 0.5
    assert res.rows[0].split_half == pytest.approx(1 / 3)
    assert res.warning == ("the neuron set is unstable: the two halves of the scoring items share 33% of their "
                           "neurons (split-half Jaccard below 0.5); findings about these particular neurons may "
                           "not replicate")
    # A = {mlp0[0], attn[0]}, B = {mlp0[0]}: overall 1/2 (stable) although the attention row is 0
    rows = [{MLP0: [1.0, 0, 0], ATTN1: [1.0]}, {MLP0: [1.0, 0, 0]}, {MLP0: [1.0, 0, 0]}, {MLP0: [1.0, 0, 0]}]
    res = measure(positive, {"neur": part_table(rows)}, SITES, n_boot=0)
    assert res.rows[0].split_half == 0.5 and res.rows[2].split_half == 0.0 and res.warning is None


def test_warning_when_no_half_selects_anything():
    rows = [{MLP0: [-1.0, 0, 0]}] * 4
    res = measure(positive, {"neur": part_table(rows)}, SITES, n_boot=0)
    assert res.rows[0].split_half != res.rows[0].split_half  # nan: both sets empty
    assert res.warning == ("the neuron set is unstable: the two halves of the scoring items share no neurons "
                           "(split-half Jaccard below 0.5); findings about these particular neurons may not "
                           "replicate")


def test_chance_of_a_one_neuron_scope_and_bands_of_two_layers():
    # both halves select the single attention neuron: expected overlap 1 * 1 / 1 = 1, chance 1 / (1 + 1 - 1) = 1
    rows = [{ATTN1: [1.0]}] * 4
    res = measure(positive, {"neur": part_table(rows)}, SITES, n_boot=0)
    by = {r.scope: r for r in res.rows}
    assert by["attention q/k/v"].chance == 1.0 and by["layers 1-1"].chance == 1.0
    # the MLP scope (3 neurons) holds none of either half's neurons: 0 + 0 -> nan
    assert by["MLP gate"].chance != by["MLP gate"].chance
    # 2 layers in 3 bands: edges 0, 1, 1, 2 -> bands 0-0 and 1-1 (the empty middle band is left out)
    assert [(name, n) for name, _, n in scopes(SITES)] == [
        ("all neurons", 4), ("MLP gate", 3), ("attention q/k/v", 1), ("layers 0-0", 3), ("layers 1-1", 1)]
    assert [r.scope for r in res.rows] == [name for name, _, _ in scopes(SITES)]


def test_split_group_takes_the_last_part_label_and_refuses_others():
    assert split_group(f"US{SEP}12") == ("US", 12)
    assert split_group(f"US{SEP}1{SEP}3") == (f"US{SEP}1", 3)
    for bad in ("US", "7", f"US{SEP}", f"US{SEP}x"):
        with pytest.raises(ValueError, match="has no part label"):
            split_group(bad)


def test_markdown_of_a_hand_built_result():
    rows = [StabilityRow("all neurons", 3, 2, 4, 1 / 3, 0.125, 0.875, 0.5),
            StabilityRow("attention q/k/v", 0, 0, 0, float("nan"), float("nan"), float("nan"), float("nan"))]
    head = ("The set identified again on two disjoint random halves of the scoring items (split-half) and on "
            "3 bootstrap resamples of them (4 random parts resampled; compared with the set found on all items). "
            "Jaccard = shared / united neurons; chance = expected split-half Jaccard of random sets of the same "
            "sizes.\n\n"
            "| scope | neurons (all items) | half A | half B | split-half Jaccard | chance | bootstrap Jaccard (mean) "
            "| bootstrap Jaccard (min) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
            "| all neurons | 3 | 2 | 4 | 0.33 | 0.12 | 0.88 | 0.50 |\n"
            "| attention q/k/v | 0 | 0 | 0 | – | – | – | – |\n\n")
    assert Stability(rows, 4, 3).to_markdown() == (
        head + "Stable by the report's rule (split-half Jaccard of all neurons >= 0.5).")
    assert Stability(rows, 4, 3, warning="too few").to_markdown() == head + "**Warning: too few**"
