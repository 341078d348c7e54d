"""kinship_matrix passes its options through (format, control, restrict_to_choices; letter by default), the
kinship result's dict form, positive_share's edges. References: evaluate_encoded on prompts encoded here and
weight-ablated copies; expectations by hand."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from culnig_ext.reporting.analysis import KinshipResult, kinship, kinship_matrix, positive_share
from culnig_ext.data.prompts import encode_choices
from culnig_ext.intervention.evaluate import evaluate_encoded
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.scoring.table import ScoreTable
from tests.intervention.test_evaluate import char_model, char_tokenizer, mc_items


def _ablated(model, neurons: NeuronSet):
    out = copy.deepcopy(model)
    with torch.no_grad():
        for site, idx in neurons.by_site().items():
            _, layer, module, proj = site.split(".")
            getattr(getattr(out.model.layers[int(layer)], module), proj).weight[idx] = 0.0
    return out


@pytest.mark.parametrize("options", [
    {},  # the defaults: letter format, full vocabulary, no control
    {"format": "letter", "restrict_to_choices": True, "control": "empty"},
    {"format": "cloze", "control": "empty"},
])
def test_kinship_matrix_passes_its_options_through(options):
    tokenizer, model, items = char_tokenizer(), char_model(seed=4), mc_items()
    g = torch.Generator().manual_seed(1)
    sets = {"US": NeuronSet.from_pairs([("layers.1.mlp.gate_proj", int(i)) for i in torch.randperm(48, generator=g)[:30]])}
    run = kinship_matrix(model, tokenizer, items, sets, batch_size=2, **options)
    fmt = options.get("format", "letter")
    control = options.get("control")
    restrict = options.get("restrict_to_choices", False)
    encs = [encode_choices(item, tokenizer, format=fmt, control=control) for item in items]
    base = evaluate_encoded(model, items, encs, format=fmt, restrict_to_choices=restrict, control=control,
                            batch_size=2, progress=False)
    # the cloze format runs each prompt once (cloze_cache): the same records up to float rounding of the scores
    assert [dataclasses.replace(r, option_scores=[]) for r in run.baseline.records] == \
        [dataclasses.replace(r, option_scores=[]) for r in base.records]
    for got, want_record in zip(run.baseline.records, base.records):
        np.testing.assert_allclose(got.option_scores, want_record.option_scores, rtol=1e-12)
    assert (run.baseline.format, run.baseline.restrict_to_choices, run.baseline.control) == (fmt, restrict, control)
    ablated = evaluate_encoded(_ablated(model, sets["US"]), items, encs, format=fmt, restrict_to_choices=restrict,
                               control=control, batch_size=2, progress=False)
    assert [r.pred for r in run.inhibited["US"].records] == [r.pred for r in ablated.records]
    want = [base.per_group[gr] - ablated.per_group[gr] for gr in run.result.groups]
    np.testing.assert_allclose(run.result.matrix[0], want, atol=1e-12)


def test_kinship_dict_form_keeps_ranks_and_column_order():
    res = kinship({"B": {"B": 0.5, "A": 0.25}, "A": {"A": 0.1, "B": 0.3}}, groups=["B", "A"])
    obj = res.to_dict()
    assert obj == {"targets": ["B", "A"], "groups": ["B", "A"], "matrix": [[0.5, 0.25], [0.3, 0.1]],
                   "ranks": {"B": {"B": 1, "A": 2}, "A": {"B": 1, "A": 2}}}
    back = KinshipResult.from_dict(obj)
    assert back.groups == ["B", "A"] and back.ranks == obj["ranks"] and back.self_rank == {"B": 1, "A": 2}


def test_positive_share_edges():
    assert positive_share(torch.tensor([[1.0, -1.0, 0.0]])).tolist() == [1.0, 0.0, 0.0]  # one item
    assert positive_share(torch.tensor([[1.0], [2.0], [-3.0], [0.5]])).tolist() == [0.75]
    with pytest.raises(ValueError, match="no items"):
        positive_share(torch.zeros(0, 3))
    assert positive_share(torch.zeros(2, 0)).shape == (0,)
    with pytest.raises(ValueError, match=r"item_scores\[1, 0\] is nan"):
        positive_share(torch.tensor([[1.0, 2.0], [float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="must be"):
        positive_share(torch.zeros(3))


def test_merge_of_tables_without_fingerprints():
    sums = {"layers.0.mlp.gate_proj": torch.ones(1, 2)}
    a = ScoreTable(["A"], [1], sums, [0.5], {"model": "m"})
    b = ScoreTable(["A"], [2], sums, [0.25], {"model": "m"})
    merged = ScoreTable.merge([a, b])  # no fingerprint to compare: not refused
    assert merged.counts.tolist() == [3] and merged.prob_sums.tolist() == [0.75]


def test_kinship_checks_rows_orders_columns_and_ranks_ties_by_their_minimum():
    with pytest.raises(ValueError, match=r"unexpected group\(s\) \['C'\]"):
        kinship({"A": {"A": 0.1, "B": 0.2, "C": 0.3}}, groups=["A", "B"])
    res = kinship({"A": {"A": 0.1, "B": 0.2}}, groups=["B", "A"])  # columns as given, not the row's key order
    assert res.groups == ["B", "A"] and res.matrix.tolist() == [[0.2, 0.1]]
    tied = kinship({"A": {"A": 0.1, "B": 0.1, "C": 0.1, "D": 0.0}})
    assert tied.ranks == {"A": {"A": 1, "B": 1, "C": 1, "D": 4}}
    assert all(isinstance(r, int) for r in tied.ranks["A"].values())


def test_layer_counts_take_every_neuron_form():
    from culnig_ext.reporting.analysis import layer_counts
    from culnig_ext.selection.neurons import Neuron

    pairs = [("layers.0.mlp.gate_proj", 1), ("layers.1.self_attn.q_proj", 2), ("layers.1.mlp.gate_proj", 0)]
    want = {"mlp": [1, 1], "attn": [0, 1]}
    assert layer_counts(pairs, 2) == want
    assert layer_counts([Neuron(s, i, 0.0) for s, i in pairs], 2) == want
    assert layer_counts(NeuronSet.from_pairs(pairs), 2) == want
    assert layer_counts({"layers.0.mlp.gate_proj": torch.tensor([1, 1, 3]), "layers.1.self_attn.q_proj": [2]}, 2) \
        == {"mlp": [2, 0], "attn": [0, 1]}  # a neuron given twice counts once
    assert layer_counts([("layers.0.mlp.gate_proj", 1)], 1) == {"mlp": [1], "attn": [0]}
    for bad in (0, -1, 1.0, True and 0):
        with pytest.raises(ValueError, match="num_layers"):
            layer_counts(pairs, bad)
    with pytest.raises(ValueError, match=r"layer 1 outside \[0, 1\)"):
        layer_counts(pairs, 1)


def test_kinship_matrix_encoded_defaults_to_the_letter_format():
    from culnig_ext.reporting.analysis import kinship_matrix_encoded

    tokenizer, model, items = char_tokenizer(), char_model(seed=5), mc_items()
    sets = {"US": NeuronSet.from_pairs([("layers.0.mlp.gate_proj", i) for i in range(20)])}
    encs = [encode_choices(item, tokenizer, format="letter") for item in items]
    run = kinship_matrix_encoded(model, items, encs, sets)
    assert run.baseline.format == "letter"
    base = evaluate_encoded(model, items, encs, format="letter", progress=False)
    assert [r.pred for r in run.baseline.records] == [r.pred for r in base.records]
