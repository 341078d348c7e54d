"""LAPE beside CULNIG: activation probabilities against a hand count, LAPE's selection against a hand-worked example."""
from __future__ import annotations

import pytest
import torch

from culnig_ext.selection import lape
from culnig_ext.scoring.table import ScoreTable
from tests.scoring.test_families import _moe_reference_forward
from tests.fixtures import family_model
from tests.fixtures import random_items, tiny_model
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)


def hand_counts(model, items, gate_modules, experts=None):
    """Per item, unbatched: count tokens with gate output > 0 per group (experts: over the routed tokens only)."""
    groups = list(dict.fromkeys(it["group"] for it in items))
    active = {name: torch.zeros(len(groups), m.out_features, dtype=torch.float64) for name, m in gate_modules.items()}
    routed_share = {}
    tokens = torch.zeros(len(groups), dtype=torch.float64)
    for it in items:
        fed = it["input_ids"]  # one answer token: the model is fed the prompt only
        row = groups.index(it["group"])
        captured = {}
        handles = [m.register_forward_hook(lambda mod, a, out, n=n: captured.__setitem__(n, out))
                   for n, m in gate_modules.items()]
        if experts is not None:
            experts.forward = _moe_reference_forward(experts, captured)
        try:
            with torch.no_grad():
                model(input_ids=torch.tensor([fed]))
        finally:
            for h in handles:
                h.remove()
            if experts is not None:
                del experts.forward
        tokens[row] += len(fed)
        for n in gate_modules:
            active[n][row] += (captured[n][0] > 0).sum(0).double()
        if experts is not None:
            inter = experts.gate_up_proj.shape[1] // 2
            for e in range(experts.gate_up_proj.shape[0]):
                key = f"layers.0.mlp.experts.{e}.gate_proj"
                acc = routed_share.setdefault(key, [torch.zeros(len(groups), inter, dtype=torch.float64),
                                                    torch.zeros(len(groups), dtype=torch.float64)])
                if (id(experts), e) in captured:
                    gate_up, tok = captured[(id(experts), e)]
                    acc[0][row] += (gate_up[:, :inter] > 0).sum(0).double()
                    acc[1][row] += len(tok)
    return groups, active, tokens, routed_share


def test_activation_probability_counts_active_tokens():
    model = tiny_model("llama")
    items = random_items(7, seed=5)
    gates = {f"layers.{i}.mlp.gate_proj": layer.mlp.gate_proj for i, layer in enumerate(model.model.layers)}
    groups, active, tokens, _ = hand_counts(model, items, gates)
    table = lape.activation_probability(model, items, batch_size=3, progress=False)
    assert table.groups == groups and table.metadata["method"] == "activation_probability"
    torch.testing.assert_close(table.prob_sums, tokens, rtol=0, atol=0)
    assert table.counts.tolist() == [3, 2, 2]
    for name, want in active.items():
        torch.testing.assert_close(table[name], want, rtol=0, atol=0)
        torch.testing.assert_close(lape.probabilities(table, name), want / tokens[:, None])
    assert 0 < float(active["layers.0.mlp.gate_proj"].sum()) < float(tokens.sum()) * 48


def test_activation_probability_of_experts_is_over_their_routed_tokens():
    model = family_model("mixtral", seed=1)
    items = random_items(6, seed=2)
    groups, _, tokens, routed = hand_counts(model, items, {}, experts=model.model.layers[0].mlp.experts)
    table = lape.activation_probability(model, items, batch_size=4, progress=False,
                                        sites=[f"layers.0.mlp.experts.{e}.gate_proj" for e in range(4)])
    for name, (active, n_routed) in routed.items():
        want = torch.where(n_routed[:, None] > 0, active / n_routed.clamp(min=1)[:, None], torch.zeros_like(active))
        torch.testing.assert_close(lape.probabilities(table, name), want, rtol=1e-12, atol=1e-12)
    assert all(float(n.sum()) > 0 for _, n in routed.values())


def hand_table():
    """Two groups, ten MLP neurons; probabilities chosen so LAPE's steps can be followed by hand."""
    probs = {
        "layers.0.mlp.gate_proj": [[0.9, 0.5, 0.0, 0.2, 0.3], [0.1, 0.5, 0.8, 0.2, 0.3]],
        "layers.1.mlp.gate_proj": [[0.6, 0.05, 0.4, 1.0, 0.1], [0.6, 0.95, 0.4, 0.0, 0.1]],
    }
    tokens = torch.tensor([10.0, 20.0], dtype=torch.float64)
    sums = {s: torch.tensor(p, dtype=torch.float64) * tokens[:, None] for s, p in probs.items()}
    # an attention site LAPE leaves out by default
    sums["layers.0.self_attn.q_proj"] = torch.tensor([[10.0, 0.0], [0.0, 20.0]], dtype=torch.float64)
    return ScoreTable(["A", "B"], [4, 4], sums, tokens, {"method": "activation_probability", "model": "hand"})


def test_lape_selection_matches_the_hand_worked_example():
    # filter_rate 0.5: the 10th smallest of the 20 probabilities is 0.3, so L0n3, L0n4 and L1n4 (none above 0.3)
    # are dropped. Entropies of the rest: L0n2 = L1n3 = 0, L1n1 = 0.199, L0n0 = 0.325, the others ln 2.
    # top_rate 0.4: round(10 * 0.4) = 4 lowest: L0n2, L1n3, L1n1, L0n0. activation_bar_ratio 0.75: the 15th
    # smallest probability is 0.6, so A gets L0n0 (0.9) and L1n3 (1.0); B gets L0n2 (0.8) and L1n1 (0.95).
    sets = lape.select(hand_table(), top_rate=0.4, filter_rate=0.5, activation_bar_ratio=0.75)
    assert [(n.site, n.index, n.score) for n in sets["A"]] == [
        ("layers.0.mlp.gate_proj", 0, 0.9), ("layers.1.mlp.gate_proj", 3, 1.0)]
    assert [(n.site, n.index, n.score) for n in sets["B"]] == [
        ("layers.0.mlp.gate_proj", 2, 0.8), ("layers.1.mlp.gate_proj", 1, 0.95)]
    assert sets["A"].method == "lape" and sets["A"].params["activation_bar"] == 0.6
    # with attention neurons too, the two fully specific q channels (entropy 0) join
    wide = lape.select(hand_table(), top_rate=0.4, filter_rate=0.5, activation_bar_ratio=0.75, kinds=("mlp", "attn"))
    assert ("layers.0.self_attn.q_proj", 0) in wide["A"] and ("layers.0.self_attn.q_proj", 1) in wide["B"]


def test_lape_refuses_what_it_cannot_select_from():
    with pytest.raises(ValueError, match="not an activation-probability table"):
        lape.select(ScoreTable(["A", "B"], [1, 1], {"layers.0.mlp.gate_proj": torch.ones(2, 3)}))
    with pytest.raises(ValueError, match="top_rate must be in"):
        lape.select(hand_table(), top_rate=0.0)
    one = ScoreTable(["A"], [1], {"layers.0.mlp.gate_proj": torch.ones(1, 3)}, [3.0], {"method": "activation_probability"})
    with pytest.raises(ValueError, match="at least two groups"):
        lape.select(one)


def test_a_gate_output_of_exactly_zero_is_not_active():
    # LAPE counts a neuron active when its gate output is > 0: a gate row of zeros gives exactly 0 on every token,
    # so those neurons are never active (a `>= 0` would count them active on every token).
    model = tiny_model("llama")
    zeroed = [0, 5, 47]
    with torch.no_grad():
        model.model.layers[0].mlp.gate_proj.weight[zeroed] = 0.0
    items = random_items(6, seed=3)
    gates = {f"layers.{i}.mlp.gate_proj": layer.mlp.gate_proj for i, layer in enumerate(model.model.layers)}
    groups, active, tokens, _ = hand_counts(model, items, gates)
    table = lape.activation_probability(model, items, batch_size=4, progress=False)
    site = "layers.0.mlp.gate_proj"
    assert table[site][:, zeroed].tolist() == [[0.0] * 3] * 3
    # the other neurons still counted as by hand (a nonzero gate row is never exactly 0 on these items)
    torch.testing.assert_close(table[site], active[site], rtol=0, atol=0)
    assert float(tokens.sum()) > 0 and float(table[site].sum()) > 0


def test_an_expert_gate_output_of_exactly_zero_is_not_active():
    # the same for mixture-of-experts gates: zero gate rows in every expert's fused gate_up weight
    model = family_model("mixtral", seed=1)
    experts = model.model.layers[0].mlp.experts
    zeroed = [0, 3]
    with torch.no_grad():
        experts.gate_up_proj[:, zeroed, :] = 0.0
    items = random_items(6, seed=2)
    _, _, _, routed = hand_counts(model, items, {}, experts=experts)
    names = [f"layers.0.mlp.experts.{e}.gate_proj" for e in range(4)]
    table = lape.activation_probability(model, items, batch_size=4, progress=False, sites=names)
    for name in names:
        active, n_routed = routed[name]
        assert float(n_routed.sum()) > 0
        assert active[:, zeroed].tolist() == [[0.0, 0.0]] * 3  # the hand count agrees: never > 0
        assert table[name][:, zeroed].tolist() == [[0.0, 0.0]] * 3, name
        want = torch.where(n_routed[:, None] > 0, active / n_routed.clamp(min=1)[:, None], torch.zeros_like(active))
        torch.testing.assert_close(lape.probabilities(table, name), want, rtol=1e-12, atol=1e-12)
