"""culnig compare's pieces: overlap, union, the Markdown table, against hand-counted sets."""
from __future__ import annotations

from culnig_ext.compare import compare_markdown, overlap, union
from culnig_ext.neurons import NeuronSet

G0, Q1 = "layers.0.mlp.gate_proj", "layers.1.self_attn.q_proj"


def test_union_keeps_each_neuron_once_with_its_best_score():
    sets = {"A": NeuronSet.from_pairs([(G0, 1, 0.5), (G0, 2, 0.1)]), "B": NeuronSet.from_pairs([(G0, 1, 0.7), (Q1, 0, 0.2)])}
    u = union(sets, "x")
    assert [(n.site, n.index, n.score) for n in u] == [(G0, 1, 0.7), (G0, 2, 0.1), (Q1, 0, 0.2)]
    assert u.method == "x"


def test_overlap_counts_shared_neurons_and_chance():
    a = NeuronSet.from_pairs([(G0, 1), (G0, 2), (Q1, 0)])
    b = NeuronSet.from_pairs([(G0, 2), (Q1, 0), (Q1, 3), (Q1, 4)])
    o = overlap(a, b, total=100)
    assert o == {"a": 3, "b": 4, "shared": 2, "jaccard": 2 / 5, "expected_by_chance": 0.12}
    assert overlap(NeuronSet([]), NeuronSet([]), total=10)["jaccard"] == 0.0


def test_markdown_shows_every_number():
    result = {
        "model": "m", "format": "cloze", "groups": ["A", "B"], "n_scoring_items": 10, "n_test_items": 8,
        "overlap": {"all": {"a": 3, "b": 4, "shared": 2, "jaccard": 0.4, "expected_by_chance": 0.12},
                    "mlp": {"a": 1, "b": 4, "shared": 1, "jaccard": 0.25, "expected_by_chance": 0.5}},
        "overlap_by_group": {"A": {"a": 2, "b": 1, "shared": 1}, "B": {"a": 1, "b": 3, "shared": 0}},
        "layers": {"num_layers": 2, "CULNIG": {"mlp": [1, 0], "attn": [0, 2]}, "LAPE": {"mlp": [3, 1], "attn": [0, 0]}},
        "inhibition": {"CULNIG": {"neurons": 3, "original": 0.5, "inhibited": 0.25, "random": [0.5, 0.375],
                                  "p_value": 0.04, "n_items": 8},
                       "LAPE": {"neurons": 4, "original": 0.5, "inhibited": 0.5, "random": [], "p_value": None,
                                "n_items": 8}},
    }
    md = compare_markdown(result)
    assert "| all sites | 3 | 4 | 2 | 0.400 | 0.12 |" in md
    assert "| MLP gates | 1 | 4 | 1 | 0.250 | 0.50 |" in md
    assert "| CULNIG | 3 | 0.500 | 0.250 | 0.438 | -0.188 | 0.04 |" in md
    assert "| LAPE | 4 | 0.500 | 0.500 | - | - | - |" in md
    assert "| 1 | 0 | 2 | 1 | 0 |" in md and "| B | 1 | 3 | 0 |" in md
