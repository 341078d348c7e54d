"""Module ranking and picks (culnig_ext.studies.finetune.blocks) against hand-built expectations on tiny models with a hand-made
NeuronSet: counts, densities, parameter counts and module names worked out by hand; the budget holds and is filled
greedily; the tie rule is the documented seeded permutation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from culnig_ext.studies.finetune.blocks import (
    ModuleBlock,
    decoder_param_count,
    layer_picks,
    pick_modules,
    rank_modules,
    target_modules,
)
from culnig_ext.selection.neurons import NeuronSet
from tests.fixtures import tiny_model

# 4 layers, hidden 32, 4 heads of 8, 2 kv heads, intermediate 48, no biases.
ATTN_PARAMS = 32 * 32 + 16 * 32 + 16 * 32 + 32 * 32  # q, k, v, o = 3072
MLP_PARAMS = 3 * 48 * 32  # gate, up, down = 4608
NORMS = 2 * 32
DECODER = 4 * (ATTN_PARAMS + MLP_PARAMS + NORMS)  # 30976
MODEL_ORDER = [f"layers.{i}.{k}" for i in range(4) for k in ("mlp", "self_attn")]


def llama4():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config).eval()


def hand_set() -> NeuronSet:
    pairs = [("layers.1.mlp.gate_proj", i) for i in (0, 5, 9, 20, 47)]  # 5 MLP neurons in layer 1
    pairs += [("layers.0.self_attn.q_proj", 0), ("layers.0.self_attn.q_proj", 31), ("layers.0.self_attn.k_proj", 3),
              ("layers.0.self_attn.v_proj", 15)]  # 4 attention neurons in layer 0
    pairs += [("layers.2.mlp.gate_proj", i) for i in (1, 2, 3)]
    pairs += [("layers.3.self_attn.v_proj", 7)]
    return NeuronSet.from_pairs(pairs, method="general")


def linear_names(layer: int, kind: str) -> tuple[str, ...]:
    if kind == "mlp":
        return tuple(f"model.layers.{layer}.mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj"))
    return tuple(f"model.layers.{layer}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj"))


def test_rank_modules_against_hand_expectation():
    model = llama4()
    ranking = rank_modules(model, hand_set())
    # (name, layer, kind, count, neurons of the kind in the block); ties (count 0) in model order.
    expected = [
        ("layers.1.mlp", 1, "mlp", 5, 48), ("layers.0.self_attn", 0, "attn", 4, 64),
        ("layers.2.mlp", 2, "mlp", 3, 48), ("layers.3.self_attn", 3, "attn", 1, 64),
        ("layers.0.mlp", 0, "mlp", 0, 48), ("layers.1.self_attn", 1, "attn", 0, 64),
        ("layers.2.self_attn", 2, "attn", 0, 64), ("layers.3.mlp", 3, "mlp", 0, 48),
    ]
    assert [(b.name, b.layer, b.kind, b.count, b.neurons) for b in ranking] == expected
    for b in ranking:
        assert b.density == b.count / b.neurons
        assert b.params == (MLP_PARAMS if b.kind == "mlp" else ATTN_PARAMS)
        assert b.linear_names == linear_names(b.layer, b.kind)
    assert decoder_param_count(model) == DECODER

    by_density = rank_modules(model, hand_set(), by="density")
    # 5/48 = 0.104 > 3/48 = 0.0625 == 4/64 = 0.0625 (tie: model order, layer 0 first) > 1/64.
    assert [b.name for b in by_density][:4] == ["layers.1.mlp", "layers.0.self_attn", "layers.2.mlp",
                                               "layers.3.self_attn"]


def test_rank_modules_fused_projections():
    model = tiny_model("phi3")  # gate_up_proj and qkv_proj
    ns = NeuronSet.from_pairs([("layers.1.mlp.gate_proj", 47), ("layers.0.self_attn.v_proj", 0)])
    ranking = {b.name: b for b in rank_modules(model, ns)}
    assert ranking["layers.1.mlp"].linear_names == ("model.layers.1.mlp.gate_up_proj", "model.layers.1.mlp.down_proj")
    assert ranking["layers.0.self_attn"].linear_names == ("model.layers.0.self_attn.qkv_proj",
                                                          "model.layers.0.self_attn.o_proj")
    # gate_up_proj [96, 32] + down_proj [32, 48]; qkv_proj [(4 + 2 + 2) * 8, 32] + o_proj [32, 32].
    assert ranking["layers.1.mlp"].params == 96 * 32 + 32 * 48
    assert ranking["layers.0.self_attn"].params == 64 * 32 + 32 * 32
    assert ranking["layers.1.mlp"].count == 1 and ranking["layers.1.mlp"].neurons == 48
    assert ranking["layers.0.self_attn"].count == 1 and ranking["layers.0.self_attn"].neurons == 64


@pytest.mark.parametrize("seed", range(5))
def test_picks_against_hand_expectation(seed):
    ranking = rank_modules(llama4(), hand_set())
    limit = 0.3 * DECODER  # 9292.8
    top = pick_modules(ranking, 0.3, "top", seed, total_params=DECODER)
    # 1.mlp (4608) + 0.attn (3072) = 7680; nothing else fits in the remaining 1612.8 (smallest block 3072).
    assert top.names == ["layers.1.mlp", "layers.0.self_attn"]
    assert top.params == 7680 and top.share == 7680 / DECODER <= 0.3

    # Bottom: the count-0 blocks, ordered by the documented tie rule: the seed's permutation of the blocks in model
    # order, lower draw first. Any two of them fit (at most 2 * 4608 = 9216 <= 9292.8), no three do.
    draw = np.random.default_rng(seed).permutation(8)
    zeros = ["layers.0.mlp", "layers.1.self_attn", "layers.2.self_attn", "layers.3.mlp"]
    expected_bottom = sorted(zeros, key=lambda name: draw[MODEL_ORDER.index(name)])[:2]
    bottom = pick_modules(ranking, 0.3, "bottom", seed, total_params=DECODER)
    assert bottom.names == expected_bottom
    assert all(b.count == 0 for b in bottom)
    assert str(seed) in bottom.tie_rule and "permutation" in bottom.tie_rule

    rand = pick_modules(ranking, 0.3, "random", seed, total_params=DECODER)
    other = np.random.default_rng([seed, 1]).permutation(8)  # its own permutation, not the tie-break one
    assert list(rand.order) == sorted(MODEL_ORDER, key=lambda name: other[MODEL_ORDER.index(name)])
    assert rand.params <= limit
    # Greedy in that order: the first block is always taken; every block left out would overflow the budget.
    assert rand.names[0] == rand.order[0]
    left = [b for b in ranking if b.name not in rand.names]
    assert all(rand.params + b.params > limit for b in left)


def test_budget_holds_and_is_filled():
    ranking = rank_modules(llama4(), hand_set())
    for budget in (0.1, 0.15, 0.2, 0.25, 0.3, 0.45, 0.5, 0.7, 0.99):
        limit = budget * DECODER
        for end in ("top", "bottom", "random"):
            for seed in range(3):
                pick = pick_modules(ranking, budget, end, seed, total_params=DECODER)
                assert pick.params == sum(b.params for b in pick) <= limit
                assert len(set(pick.names)) == len(pick)
                left = [b for b in ranking if b.name not in pick.names]
                assert all(pick.params + b.params > limit for b in left), (budget, end, seed)
    everything = pick_modules(ranking, 1.0, "top", total_params=DECODER)
    assert len(everything) == 8 and everything.params == DECODER - 4 * NORMS
    with pytest.raises(ValueError, match="smaller than the smallest block"):
        pick_modules(ranking, 0.05, "top", total_params=DECODER)  # 1548.8 < 3072


def test_target_modules_and_layer_picks():
    ranking = rank_modules(llama4(), hand_set())
    top = pick_modules(ranking, 0.3, "top", total_params=DECODER)
    assert target_modules(top) == list(linear_names(1, "mlp") + linear_names(0, "attn"))
    assert layer_picks(top, 4) == {"mlp": [0, 1, 0, 0], "attn": [1, 0, 0, 0]}


def test_bad_input():
    model = llama4()
    ranking = rank_modules(model, hand_set())
    with pytest.raises(ValueError, match="end must be one of"):
        pick_modules(ranking, 0.3, "middle", total_params=DECODER)
    for budget in (0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match="budget must be a share"):
            pick_modules(ranking, budget, "top", total_params=DECODER)
    with pytest.raises(ValueError, match="pass total_params"):
        pick_modules(ranking, 0.3, "top")
    with pytest.raises(ValueError, match="no blocks"):
        pick_modules([], 0.3, "top", total_params=DECODER)
    with pytest.raises(ValueError, match="names a block twice"):
        pick_modules(ranking + ranking[:1], 0.5, "top", total_params=DECODER)
    with pytest.raises(ValueError, match="out of range for width 48"):
        rank_modules(model, NeuronSet.from_pairs([("layers.0.mlp.gate_proj", 48)]))
    with pytest.raises(ValueError, match="not a site of the model"):
        rank_modules(model, NeuronSet.from_pairs([("layers.7.mlp.gate_proj", 0)]))
    with pytest.raises(TypeError, match="expected a ModuleBlock"):
        target_modules(["layers.0.mlp"])
    assert isinstance(ranking[0], ModuleBlock)


def density_set() -> NeuronSet:
    """A set whose count and density orders differ: attention blocks are 64 neurons wide, MLP blocks 48."""
    pairs = [("layers.0.self_attn.q_proj", i) for i in range(8)]  # 8 / 64 = 0.125
    pairs += [("layers.1.mlp.gate_proj", i) for i in range(7)]  # 7 / 48 = 0.1458
    pairs += [("layers.2.mlp.gate_proj", 30)]  # 1 / 48 = 0.0208
    pairs += [("layers.3.self_attn.k_proj", 2)]  # 1 / 64 = 0.0156
    return NeuronSet.from_pairs(pairs, method="general")


DENSITY_ORDER = ["layers.1.mlp", "layers.0.self_attn", "layers.2.mlp", "layers.3.self_attn",
                 "layers.0.mlp", "layers.1.self_attn", "layers.2.self_attn", "layers.3.mlp"]


def test_rank_modules_by_density_differs_from_by_count():
    model = llama4()
    by_count = rank_modules(model, density_set())
    assert [(b.name, b.count) for b in by_count] == [
        ("layers.0.self_attn", 8), ("layers.1.mlp", 7), ("layers.2.mlp", 1), ("layers.3.self_attn", 1),
        ("layers.0.mlp", 0), ("layers.1.self_attn", 0), ("layers.2.self_attn", 0), ("layers.3.mlp", 0)]
    by_density = rank_modules(model, density_set(), by="density")
    assert [b.name for b in by_density] == DENSITY_ORDER
    assert [b.density for b in by_density][:4] == [7 / 48, 8 / 64, 1 / 48, 1 / 64]


@pytest.mark.parametrize("seed", range(3))
def test_pick_modules_by_density_uses_density(seed):
    # The ranking handed in is sorted by count: pick_modules must re-rank by the `by` it is given.
    ranking = rank_modules(llama4(), density_set())
    budget = 0.2  # 6195.2 parameters: one MLP block (4608) or two attention blocks (6144), not an MLP + attention
    top = pick_modules(ranking, budget, "top", seed, total_params=DECODER, by="density")
    assert list(top.order[:4]) == DENSITY_ORDER[:4]
    assert top.names == ["layers.1.mlp"] and top.by == "density"
    # the same ranking by count: 0.self_attn (3072) first, then 3.self_attn (3072) is the next that fits
    assert pick_modules(ranking, budget, "top", seed, total_params=DECODER).names == ["layers.0.self_attn",
                                                                                    "layers.3.self_attn"]
    bottom = pick_modules(ranking, budget, "bottom", seed, total_params=DECODER, by="density")
    assert list(bottom.order[4:]) == ["layers.3.self_attn", "layers.2.mlp", "layers.0.self_attn", "layers.1.mlp"]
