"""Property tests (hypothesis) of the module ranking and picks (``culnig_ext.studies.finetune.blocks``) against
brute-force references written here: ``rank_modules`` counts by hand the neurons of a random set per block on
one tiny Llama (built once); ``pick_modules`` on synthetic blocks (no model) against the documented order
(``TIE_RULE``) and a greedy fill written out, plus invariants that hold whatever the tie rule."""
from __future__ import annotations

import functools

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from transformers import AutoModelForCausalLM, LlamaConfig

from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.studies.finetune.blocks import ModuleBlock, pick_modules, rank_modules

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LAYERS = 3
# hidden 16, 4 heads of 4, 2 kv heads, intermediate 12: gate 12, q 16, k 8, v 8 neurons per layer
WIDTHS = {"mlp.gate_proj": 12, "self_attn.q_proj": 16, "self_attn.k_proj": 8, "self_attn.v_proj": 8}
BLOCK_WIDTH = {"mlp": 12, "attn": 16 + 8 + 8}


@functools.lru_cache(maxsize=1)
def llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=12, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(config).eval()


@st.composite
def neuron_sets(draw):
    pairs = []
    for layer in range(LAYERS):
        for proj, width in WIDTHS.items():
            # often empty, sometimes full: equal counts across blocks are common
            k = draw(st.sampled_from([0, 0, 1, 2, 3, width]))
            pairs += [(f"layers.{layer}.{proj}", i) for i in draw(st.permutations(range(width)))[:k]]
    return pairs


@SETTINGS
@given(neuron_sets(), st.sampled_from(["count", "density"]))
def test_rank_modules_is_brute_force_ranking(pairs, by):
    got = rank_modules(llama(), NeuronSet.from_pairs(pairs, method="general"), by=by)
    blocks = []
    for layer in range(LAYERS):  # model order: layer, then MLP before attention
        for kind, attr in (("mlp", "mlp"), ("attn", "self_attn")):
            count = sum(1 for site, _ in pairs if site.startswith(f"layers.{layer}.{attr}."))
            blocks.append((f"layers.{layer}.{attr}", kind, count, count / BLOCK_WIDTH[kind]))
    rank = (lambda b: b[2]) if by == "count" else (lambda b: b[3])
    # brute force: repeatedly take the first (in model order) of the highest remaining
    expected, left = [], list(blocks)
    while left:
        best = max(rank(b) for b in left)
        pick = next(b for b in left if rank(b) == best)
        expected.append(pick)
        left.remove(pick)
    assert [(b.name, b.kind, b.count, b.density) for b in got] == expected
    assert all(b.neurons == BLOCK_WIDTH[b.kind] for b in got)


# --------------------------------------------------------------------------------------------- pick_modules
@st.composite
def rankings(draw):
    n_layers = draw(st.integers(1, 5))
    blocks = []
    for layer in range(n_layers):
        for kind, attr in (("mlp", "mlp"), ("attn", "self_attn")):
            if draw(st.integers(0, 4)) == 0 and blocks:
                continue  # a missing block now and then
            neurons = draw(st.sampled_from([4, 8]))
            count = draw(st.integers(0, 3))
            blocks.append(ModuleBlock(f"layers.{layer}.{attr}", layer, kind, count, neurons, count / neurons,
                                      draw(st.sampled_from([10, 20, 30, 55])), (f"m.layers.{layer}.{attr}.x",)))
    extra = draw(st.sampled_from([0, 0, 10, 40]) | st.integers(0, 100))  # 0: budget 1.0 fits every block exactly
    return draw(st.permutations(blocks)), sum(b.params for b in blocks) + extra


@SETTINGS
@given(rankings(), st.sampled_from([1.0, 0.5, 0.25]) | st.floats(0.01, 1.0), st.sampled_from(["top", "bottom", "random"]), st.integers(0, 1000),
       st.sampled_from(["count", "density"]))
def test_pick_modules_against_documented_order_and_greedy_fill(case, budget, end, seed, by):
    blocks, total = case
    limit = budget * total
    if min(b.params for b in blocks) > limit:
        return  # refused (tested by hand elsewhere)
    got = pick_modules(blocks, budget, end, seed, total_params=total, by=by)

    model_order = sorted(blocks, key=lambda b: (b.layer, 0 if b.kind == "mlp" else 1))
    draw = np.random.default_rng(seed).permutation(len(model_order)).tolist()
    value = [b.count if by == "count" else b.density for b in model_order]
    pos = list(range(len(model_order)))
    if end == "top":
        order = sorted(pos, key=lambda i: (-value[i], draw[i]))
    elif end == "bottom":
        order = sorted(pos, key=lambda i: (value[i], draw[i]))
    else:
        other = np.random.default_rng([seed, 1]).permutation(len(model_order)).tolist()
        order = sorted(pos, key=lambda i: other[i])
    assert list(got.order) == [model_order[i].name for i in order]

    picked, skipped, used = [], [], 0
    for i in order:
        b = model_order[i]
        if used + b.params <= limit:
            picked.append(b.name)
            used += b.params
        else:
            skipped.append(b.name)
    assert got.names == picked and list(got.skipped) == skipped

    # invariants that hold whatever the tie rule
    by_name = {b.name: b for b in blocks}
    assert sorted(got.order) == sorted(by_name)
    ranks = [by_name[n].count if by == "count" else by_name[n].density for n in got.order]
    if end == "top":
        assert ranks == sorted(ranks, reverse=True)
    elif end == "bottom":
        assert ranks == sorted(ranks)
    assert got.share <= budget and got.params == sum(by_name[n].params for n in got.names)
    assert not set(got.names) & set(got.skipped) and len(got.names) + len(got.skipped) == len(blocks)
    # greedy: no skipped block would still fit beside the final pick
    assert all(got.params + by_name[n].params > limit for n in got.skipped)
    # the input order of the ranking does not matter
    assert pick_modules(blocks[::-1], budget, end, seed, total_params=total, by=by) == got
