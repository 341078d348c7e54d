"""A hand-made run folder for the explorer and export tests: two sites, three groups, small integer-valued sums
(so every expected number below is exact), a general set, two specific sets, an instance view, a config."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from culnig_ext.reporting.instance import write_instance
from culnig_ext.scoring.table import ScoreTable
from culnig_ext.selection.neurons import Neuron, NeuronSet

GROUPS = ["US", "UK", "Spain"]
MLP, ATTN = "layers.0.mlp.gate_proj", "layers.1.self_attn.q_proj"
# sums[site][group][neuron]
NEUR = {MLP: [[4, 0, 2, 1], [2, 0, 2, 1], [0, 6, 2, 1]], ATTN: [[1, 3, 0], [1, 0, 0], [1, 0, 9]]}
CTRL = {MLP: [[1, 0, 0, 1], [1, 0, 0, 1], [1, 0, 0, 1]], ATTN: [[0, 0, 0], [0, 0, 0], [0, 3, 0]]}
CRC = {MLP: [[0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]], ATTN: [[2, 0, 0], [2, 0, 0], [2, 0, 0]]}
COUNTS = {"neur": [2, 2, 4], "ctrl": [2, 2, 4], "crc": [1, 1, 2]}  # totals 8, 8, 4

RESULTS = {
    "format": "culnig-report/1", "title": "Hand-made run", "model": "org/tiny-model", "neuron_set": "culture-general",
    "n_neurons": 2, "alpha": 0.05,
    "rows": [{"eval_set": "Cultural test", "cultural": True, "n_items": 8, "original": 0.625, "inhibited": 0.25,
              "random": [0.5, 0.75], "p_value": 0.02, "metric": "accuracy", "diff_low": -0.5, "diff_high": -0.125,
              "mde": 0.1875},
             {"eval_set": "General knowledge", "cultural": False, "n_items": 4, "original": 0.75, "inhibited": 0.5,
              "random": [0.5], "p_value": 0.5, "metric": "accuracy"}],
    "kinship": {"targets": ["US", "Spain"], "groups": ["US", "UK", "Spain"],
                "matrix": [[0.25, 0.0, -0.125], [0.0, 0.125, 0.5]]},
    "layers": {"num_layers": 2, "counts": {"mlp": [1, 0], "attn": [0, 1]}},
    "notes": ["A note with <b>markup</b> that must stay text."], "metadata": {"protocol": "ours"},
    "sections": [{"title": "Stability of the culture-general neurons", "markdown":
                  "Intro text.\n\n| scope | neurons (all items) | half A | half B | split-half Jaccard | chance | "
                  "bootstrap Jaccard (mean) | bootstrap Jaccard (min) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
                  "| all neurons | 2 | 2 | 3 | 0.67 | 0.10 | 0.80 | 0.50 |\n| MLP gate | 1 | 1 | 1 | 1.00 | 0.25 | – | – |"
                  "\n\n**Warning: unstable**"}],
}
QUESTIONS = ["Which food is eaten in the US?", "Which sport is played in the UK?", "What do people drink in Spain?"]


def table(sums: dict, counts: list[int]) -> ScoreTable:
    return ScoreTable(GROUPS, counts, {s: torch.tensor(v, dtype=torch.float64) for s, v in sums.items()},
                      prob_sums=[c / 2 for c in counts], metadata={"model": "tiny-model", "dtype": "float64"})


def general_set() -> NeuronSet:
    return NeuronSet([Neuron(MLP, 0, 0.5), Neuron(ATTN, 2, 0.75)], method="general", model="tiny-model",
                     params={"normalize": "count", "t_mlp": 0.25}, sources={"neur": "abc"})


def specific_sets() -> dict[str, NeuronSet]:
    return {"US": NeuronSet([Neuron(MLP, 0, 0.25)], method="specific", model="tiny-model", params={"group": "US"}),
            "Spain": NeuronSet([Neuron(ATTN, 2, 1.125), Neuron(MLP, 1, 0.75)], method="specific", model="tiny-model",
                               params={"group": "Spain"})}


def make_run(root: Path, *, instance: bool = True) -> Path:
    """The folder (results.json, config.json, scores/, neurons/, instance.json); returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps(RESULTS), encoding="utf-8")
    (root / "config.json").write_text(json.dumps({"model": "org/tiny-model", "seed": 7}), encoding="utf-8")
    for role, sums in (("neur", NEUR), ("ctrl", CTRL), ("crc", CRC)):
        table(sums, COUNTS[role]).save(root / "scores" / f"{role}.safetensors")
    general_set().save(root / "neurons" / "general.json")
    for g, ns in specific_sets().items():
        ns.save(root / "neurons" / "specific" / f"{g.lower()}.json")
    if instance:  # item scores of the general neurons on the 3 items: [items, neurons]
        write_instance(root, {"format": "culnig-instance/1", "n_items": 3,
                              "items": [{"id": f"i{k}", "group": GROUPS[k], "question": QUESTIONS[k]} for k in (2, 0)],
                              "neurons": {f"{MLP}:0": {"positive_share": 2 / 3, "top": [[0, 0.5], [1, 0.25]]},
                                          f"{ATTN}:2": {"positive_share": 1 / 3, "top": [[1, 0.125]]}}})
    return root
