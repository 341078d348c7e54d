"""instance.json: each neuron's highest-scoring items, against a hand-sorted matrix."""
from __future__ import annotations

import json

import pytest
import torch

from culnig_ext.data.schema import MCItem
from culnig_ext.reporting.instance import read_instance, top_items, write_instance
from culnig_ext.selection.neurons import Neuron

ITEMS = [MCItem(id=f"q{k}", group=g, question=f"Question {k}?", choices=("a", "b"), answer_idx=0)
         for k, g in enumerate(["US", "UK", "US", "Spain"])]
NEURONS = [Neuron("layers.0.mlp.gate_proj", 4, 1.0), Neuron("layers.1.self_attn.v_proj", 0, 0.5)]
PER_ITEM = torch.tensor([[0.5, -1.0], [-0.25, 2.0], [3.0, 0.0], [1.0, 0.75]])


def test_top_items_by_hand(tmp_path):
    obj = top_items(NEURONS, PER_ITEM, ITEMS, top=2)
    first = obj["neurons"]["layers.0.mlp.gate_proj:4"]
    second = obj["neurons"]["layers.1.self_attn.v_proj:0"]
    ids = lambda entry: [(obj["items"][p]["id"], v) for p, v in entry["top"]]
    assert ids(first) == [("q2", 3.0), ("q3", 1.0)]
    assert ids(second) == [("q1", 2.0), ("q3", 0.75)]
    assert first["positive_share"] == 0.75 and second["positive_share"] == 0.5
    assert sorted(it["id"] for it in obj["items"]) == ["q1", "q2", "q3"]  # only the items listed
    assert {it["id"]: it["question"] for it in obj["items"]}["q2"] == "Question 2?"
    write_instance(tmp_path, obj)
    assert read_instance(tmp_path) == json.loads(json.dumps(obj))


def test_shape_and_positions_checked(tmp_path):
    with pytest.raises(ValueError, match=r"per_item must be \[items=4, neurons=2\], got \(4, 1\)"):
        top_items(NEURONS, PER_ITEM[:, :1], ITEMS)
    obj = top_items(NEURONS, PER_ITEM, ITEMS, top=1)
    obj["neurons"]["layers.0.mlp.gate_proj:4"]["top"] = [[7, 1.0]]
    write_instance(tmp_path, obj)
    with pytest.raises(ValueError, match=r"instance.json: neurons\['layers.0.mlp.gate_proj:4'\].top: item position 7"):
        read_instance(tmp_path)
    assert read_instance(tmp_path / "nowhere") is None
