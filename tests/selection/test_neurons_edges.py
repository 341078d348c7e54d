"""NeuronSet edges: the repr, the metadata of derived and combined sets (every field, written out by hand) and
``from_pandas`` metadata overrides."""
from __future__ import annotations

import pandas as pd

from culnig_ext.selection.neurons import Neuron, NeuronSet

G0 = "layers.0.mlp.gate_proj"
G1 = "layers.1.mlp.gate_proj"
Q0 = "layers.0.self_attn.q_proj"
V1 = "layers.1.self_attn.v_proj"


def test_repr_counts_each_kind():
    s = NeuronSet([Neuron(G0, 1), Neuron(G1, 0), Neuron(Q0, 2), Neuron(V1, 3), Neuron(V1, 4)], method="general",
                  model="tiny")
    assert repr(s) == "NeuronSet(5 neurons: mlp=2, attn=3; method='general', model='tiny')"
    assert repr(NeuronSet([])) == "NeuronSet(0 neurons: mlp=0, attn=0; method='', model='')"


def test_of_kind_keeps_every_metadata_field():
    s = NeuronSet([Neuron(G0, 1, 0.5), Neuron(Q0, 2, 1.5)], method="general", params={"top": 2, "rule": "max"},
                  model="tiny", sources={"neur": "f1", "ctrl": "f2"})
    mlp = s.of_kind("mlp")
    assert mlp.pairs == [(G0, 1)] and mlp.score(G0, 1) == 0.5
    assert (mlp.method, mlp.params, mlp.model, mlp.sources) == (
        "general", {"top": 2, "rule": "max"}, "tiny", {"neur": "f1", "ctrl": "f2"})
    assert mlp == NeuronSet([Neuron(G0, 1, 0.5)], method="general", params={"top": 2, "rule": "max"}, model="tiny",
                            sources={"neur": "f1", "ctrl": "f2"})


def _pair():
    a = NeuronSet([Neuron(G0, 1, 1.0), Neuron(G0, 2, 2.0)], method="general", params={"k": 1}, model="m",
                  sources={"neur": "aa"})
    b = NeuronSet([Neuron(G0, 2, 9.0), Neuron(Q0, 0, 4.0)], method="random", params={"seed": 3}, model="",
                  sources={"neur": "bb"})
    return a, b


def test_combined_sets_record_both_sides_in_full():
    a, b = _pair()
    params = {"left": {"method": "general", "params": {"k": 1}}, "right": {"method": "random", "params": {"seed": 3}}}
    sources = {"left.neur": "aa", "right.neur": "bb"}
    for op, got, pairs in (("union", a.union(b), [(G0, 1), (G0, 2), (Q0, 0)]),
                           ("intersection", a.intersection(b), [(G0, 2)]),
                           ("difference", a.difference(b), [(G0, 1)])):
        assert got.pairs == pairs, op
        assert (got.method, got.params, got.model, got.sources) == (op, params, "m", sources), op


def test_combined_set_takes_the_model_of_whichever_side_has_one():
    a, b = _pair()  # a's model is "m", b's is unknown ("")
    assert b.union(a).model == "m" and b.intersection(a).model == "m" and b.difference(a).model == "m"
    assert a.union(b).model == "m"
    assert NeuronSet([]).union(NeuronSet([])).model == ""


def test_from_pandas_meta_overrides_attrs():
    df = pd.DataFrame({"site": [Q0, G0], "index": [4, 1], "score": [0.25, -1.0]})
    df.attrs.update(method="general", model="from-attrs", params={"a": 1}, sources={"neur": "x"})
    got = NeuronSet.from_pandas(df, model="override", params={"b": 2})
    assert got.pairs == [(G0, 1), (Q0, 4)] and [n.score for n in got] == [-1.0, 0.25]
    assert (got.method, got.params, got.model, got.sources) == ("general", {"b": 2}, "override", {"neur": "x"})
