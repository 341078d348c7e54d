"""``culnig overlap``: shared counts, Jaccard and per-layer overlap against hand counts; cross-effects against a
reference that inhibits by zeroing the neurons' weight rows in a copy of the model and ranks the options by summed
float64 log-probabilities; identification on the paper's NormAd neuron half."""
from __future__ import annotations

import contextlib
import copy
import csv
import io
import json

import pytest
import torch

from culnig_ext.cli import main as cli
from culnig_ext.data import load_items, write_jsonl
from culnig_ext.models.loading import load_model
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.studies.overlap import cross_effects, overlap_stats
from culnig_ext.scoring.table import ScoreTable
from tests.studies.test_pipeline import INTERMEDIATE, LAYERS, save_tiny_model


def ns(pairs):
    return NeuronSet.from_pairs([(s, i, 1.0) for s, i in pairs], method="test")


G0, G1, Q1 = "layers.0.mlp.gate_proj", "layers.1.mlp.gate_proj", "layers.1.self_attn.q_proj"


def test_overlap_stats_by_hand():
    a = ns([(G0, 0), (G0, 1), (G1, 5), (Q1, 2)])
    b = ns([(G0, 1), (G1, 5), (G1, 6)])
    c = ns([(Q1, 3)])
    st = overlap_stats({"a": a, "b": b, "c": c})
    assert st["sizes"] == [4, 3, 1]
    assert st["shared"] == [[4, 2, 0], [2, 3, 0], [0, 0, 1]]
    assert st["jaccard"][0][1] == pytest.approx(2 / 5) and st["jaccard"][0][2] == 0.0 and st["jaccard"][1][1] == 1.0
    ab = next(p for p in st["per_layer"] if (p["a"], p["b"]) == ("a", "b"))
    assert ab["shared"] == {"0": 1, "1": 1}
    assert st["kinds"][0] == {"mlp": 3, "attn": 1}
    with pytest.raises(ValueError, match="at least 2"):
        overlap_stats({"a": a})


@torch.no_grad()
def reference_accuracy(model, tokenizer, items, neurons: NeuronSet) -> float:
    """Cloze accuracy with ``neurons`` zeroed in the weights (a gate row zero -> silu(0) * up = 0; a q/k/v row zero
    -> that output is 0), options ranked by summed float64 log-probabilities of their tokens."""
    m = copy.deepcopy(model).double()
    modules = dict(m.model.named_modules())
    for n in neurons:
        modules[n.site].weight[n.index] = 0.0
    hits = 0
    for it in items:
        prompt = tokenizer(f"Question: {it.question}\nAnswer:")["input_ids"]
        scores = []
        for choice in it.choices:
            cont = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + cont])
            logp = torch.log_softmax(m(ids).logits[0].double(), -1)
            scores.append(sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(cont)))
        hits += int(max(range(len(scores)), key=scores.__getitem__) == it.answer_idx)
    return hits / len(items)


def test_overlap_cli_cross_effects(tmp_path):
    model_dir = save_tiny_model(tmp_path / "m")
    a = ns([(G0, 0), (G0, 1), (G0, 2), (G1, 5), (Q1, 2)])
    b = ns([(G0, 1), (G1, 5), (G1, 6), (G1, 7)])
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    cultural, general = load_items("builtin:cultural")[:10], load_items("builtin:general")[:10]
    write_jsonl(cultural, tmp_path / "c.jsonl")
    write_jsonl(general, tmp_path / "g.jsonl")
    out = tmp_path / "ov"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main(["overlap", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--model", str(model_dir),
                         "--eval", str(tmp_path / "c.jsonl"), "--eval", str(tmp_path / "g.jsonl"), "--split", "all",
                         "--format", "cloze", "--no-progress", "--out", str(out)])
    assert code == 0, buf.getvalue()
    res = json.loads((out / "overlap.json").read_text())
    assert res["overlap"]["shared"][0][1] == 2 and res["overlap"]["jaccard"][0][1] == pytest.approx(2 / 7)
    eff = res["cross_effects"]
    model, tok = load_model(str(model_dir))
    assert eff["eval_sets"] == ["a", "b"] and eff["n_items"] == [10, 10]
    empty = NeuronSet.from_pairs([], method="none")
    for j, items in enumerate((cultural, general)):
        assert eff["original"][j] == pytest.approx(reference_accuracy(model, tok, items, empty))
        for i, neurons in enumerate((a, b)):
            assert eff["inhibited"][i][j] == pytest.approx(reference_accuracy(model, tok, items, neurons))
            assert eff["drop"][i][j] == pytest.approx(eff["original"][j] - eff["inhibited"][i][j])
    md = (out / "overlap.md").read_text()
    assert "| a | 5 | 2 |" in md and "## Cross-effects" in md
    assert (out / "overlap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_identify_on_paper_normad_half(tmp_path):
    """Neurons can be identified on the paper's NormAd neuron half: ``culnig score --data paper:normad:PATH --split
    neur`` scores exactly that half, 4 variants each."""
    from tests.data.test_protocols import byte_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    rows = [{"ID": str(i), "Country": ["india", "china"][i % 2], "Story": f"S{i}.",
             "Gold Label": ["yes", "no", "neutral"][(i // 2) % 3]} for i in range(12)]
    path = tmp_path / "normad.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    folder = tmp_path / "bm"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=259, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                                 pad_token_id=0, bos_token_id=1, eos_token_id=2)).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["score", "--model", str(folder), "--data", f"paper:normad:{path}", "--split", "neur",
                         "--format", "letter", "--no-progress", "--out", str(tmp_path / "n.safetensors")]) == 0
    table = ScoreTable.load(tmp_path / "n.safetensors")
    # per (country, label) 2 rows -> 1 in the neuron half: 6 rows x 4 variants, 3 rows x 4 per country
    assert dict(zip(table.groups, table.counts.tolist())) == {"India": 12, "China": 12}


def test_cross_effects_inhibit_each_set(tmp_path):
    """Sets whose inhibition changes the accuracies (checked on the hand-zeroed reference), so a cross-effects run
    that forgot to inhibit would report the original accuracies in every row and fail here."""
    model, tok = load_model(str(save_tiny_model(tmp_path / "m")))
    every_gate = ns([(f"layers.{layer}.mlp.gate_proj", i) for layer in range(LAYERS) for i in range(INTERMEDIATE)])
    first_gates = ns([(G0, i) for i in range(INTERMEDIATE)])
    sets = {"every_gate": every_gate, "first_gates": first_gates}
    evals = {"c": load_items("builtin:cultural")[:12], "g": load_items("builtin:general")[:12]}
    empty = NeuronSet.from_pairs([], method="none")
    original = [reference_accuracy(model, tok, items, empty) for items in evals.values()]
    inhibited = [[reference_accuracy(model, tok, items, s) for items in evals.values()] for s in sets.values()]
    # the premise: inhibiting every MLP gate changes the accuracy of both evaluation sets (12 items: steps of 1/12)
    assert all(abs(a - o) > 0.05 for a, o in zip(inhibited[0], original)), (original, inhibited)
    eff = cross_effects(model, tok, sets, evals, fmt="cloze", progress=False)
    assert eff["sets"] == ["every_gate", "first_gates"] and eff["eval_sets"] == ["c", "g"]
    assert eff["original"] == pytest.approx(original)
    for i in range(2):
        assert eff["inhibited"][i] == pytest.approx(inhibited[i])
        assert eff["drop"][i] == pytest.approx([o - a for o, a in zip(original, inhibited[i])])
    # inhibition is undone afterwards: the model scores as before
    assert reference_accuracy(model, tok, evals["c"], empty) == original[0]
