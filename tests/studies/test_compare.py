"""culnig compare's pieces: overlap, union, the Markdown table, against hand-counted sets."""
from __future__ import annotations

from culnig_ext.studies.compare import compare_markdown, overlap, union
from culnig_ext.selection.neurons import NeuronSet

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


def test_run_compare_end_to_end_on_a_tiny_model(tmp_path):
    """run_compare on a tiny random Llama and the builtin data: what compare.json says equals a recount from the
    neuron files and evaluation records it wrote."""
    import json

    import torch

    from culnig_ext.studies.compare import CompareConfig, run_compare
    from culnig_ext.intervention.evaluate import EvalResult
    from tests.studies.test_pipeline import save_tiny_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model_dir = save_tiny_model(tmp_path / "model")
        cfg = CompareConfig(out=str(tmp_path / "cmp"), model=str(model_dir), format="cloze", t_specific=0.05,
                            r_specific=0.02, z_min=0.0, top_rate=0.2, filter_rate=0.5, activation_bar_ratio=0.5,
                            n_random=1, max_items=24, max_test_items=8, progress=False)
        result = run_compare(cfg)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "cmp"
    assert json.loads((out / "compare.json").read_text()) == result
    assert (out / "compare.md").read_text().startswith(f"# CULNIG vs LAPE on {model_dir}")
    sets = {m: [NeuronSet.load(p) for p in sorted((out / "neurons" / m).glob("*.json"))] for m in ("culnig", "lape")}
    unions = {m: {pair for s in ss for pair in s.pairs} for m, ss in sets.items()}
    assert len(unions["culnig"]) > 0 and len(unions["lape"]) > 0
    o = result["overlap"]["all"]
    assert (o["a"], o["b"], o["shared"]) == (len(unions["culnig"]), len(unions["lape"]),
                                             len(unions["culnig"] & unions["lape"]))
    assert o["expected_by_chance"] == len(unions["culnig"]) * len(unions["lape"]) / 224  # 96 gate + 128 q/k/v
    assert all(site.endswith("mlp.gate_proj") for site, _ in unions["lape"])  # LAPE ranks MLP neurons only
    per_layer = [sum(1 for s, _ in unions["culnig"] if s.startswith(f"layers.{i}.mlp")) for i in range(2)]
    assert result["layers"]["CULNIG"]["mlp"] == per_layer
    original = EvalResult.load(out / "eval" / "cultural_test__original.json")
    inhibited = EvalResult.load(out / "eval" / "cultural_test__lape.json")
    assert result["inhibition"]["CULNIG"]["original"] == original.accuracy
    assert result["inhibition"]["LAPE"]["inhibited"] == inhibited.accuracy
    assert len(result["inhibition"]["LAPE"]["random"]) == 1 and result["n_test_items"] == 8
