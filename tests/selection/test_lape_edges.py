"""LAPE at its edges, against hand counts: the sites and groups a caller names, one item per batch, families whose
MLP output is [B * T, N] (OPT) or whose positions are absolute (GPT-2), one expert alone; the progress bar; the
table's and the sets' provenance; and the errors that name the option or the group."""
from __future__ import annotations

import re

import pytest
import torch

from culnig_ext.data.items import as_score_items
from culnig_ext.scoring.scorer import dataset_fingerprint
from culnig_ext.scoring.table import ScoreTable
from culnig_ext.selection import lape
from tests.fixtures import family_model, random_items, tiny_model
from tests.selection.test_lape import hand_counts, hand_table
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)


def llama_gates(model):
    return {f"layers.{i}.mlp.gate_proj": layer.mlp.gate_proj for i, layer in enumerate(model.model.layers)}


def test_the_named_sites_and_groups_in_their_order():
    model = tiny_model("llama")
    items = random_items(7, seed=5)  # groups A, B, C, A, B, C, A
    _, active, tokens, _ = hand_counts(model, items, llama_gates(model))  # rows A, B, C
    site = "layers.1.mlp.gate_proj"
    table = lape.activation_probability(model, items, batch_size=3, progress=False, sites=[site],
                                        groups=["C", "A", "D", "B"])
    assert table.sites == [site] and table.groups == ["C", "A", "D", "B"]
    assert table.counts.tolist() == [2, 3, 0, 2]
    zero = torch.zeros(1, active[site].shape[1], dtype=torch.float64)
    want = torch.cat([active[site][2:3], active[site][0:1], zero, active[site][1:2]])
    torch.testing.assert_close(table[site], want, rtol=0, atol=0)
    torch.testing.assert_close(table.prob_sums, torch.stack([tokens[2], tokens[0], tokens.new_zeros(()), tokens[1]]),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match=re.escape("items have group(s) ['C'] not in groups=['A', 'B']")):
        lape.activation_probability(model, items, progress=False, groups=["A", "B"])


def test_one_item_per_batch_and_the_batch_size_bound():
    model = tiny_model("llama")
    items = random_items(5, seed=8)
    _, active, tokens, _ = hand_counts(model, items, llama_gates(model))
    table = lape.activation_probability(model, items, batch_size=1, progress=False)
    for name, want in active.items():
        torch.testing.assert_close(table[name], want, rtol=0, atol=0)
    torch.testing.assert_close(table.prob_sums, tokens, rtol=0, atol=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        lape.activation_probability(model, items, batch_size=0, progress=False)


def plain_hand_counts(model, items, modules):
    """Unbatched, no padding: per group, the tokens on which each output channel of ``modules`` is > 0."""
    groups = list(dict.fromkeys(it["group"] for it in items))
    active = {n: None for n in modules}
    tokens = torch.zeros(len(groups), dtype=torch.float64)
    for it in items:
        fed, row = it["input_ids"], groups.index(it["group"])
        captured = {}
        handles = [m.register_forward_hook(lambda mod, a, out, n=n: captured.__setitem__(n, out))
                   for n, m in modules.items()]
        try:
            with torch.no_grad():
                model(input_ids=torch.tensor([fed]))
        finally:
            for h in handles:
                h.remove()
        tokens[row] += len(fed)
        for n in modules:
            per_token = captured[n].reshape(len(fed), -1)  # OPT's fc1 gives [T, N], the others [1, T, N]
            if active[n] is None:
                active[n] = torch.zeros(len(groups), per_token.shape[1], dtype=torch.float64)
            active[n][row] += (per_token > 0).sum(0).double()
    return groups, active, tokens


@pytest.mark.parametrize("arch", ["opt", "gpt2"])
def test_gateless_families_by_hand(arch):
    # OPT flattens its tokens ([B * T, N] into fc1); GPT-2 adds absolute position embeddings, so a left-padded
    # item is right only with the position ids that restart at its first real token
    model = family_model(arch, seed=3)
    layers = model.model.decoder.layers if arch == "opt" else model.transformer.h
    fc = {f"layers.{i}.mlp.gate_proj": (layer.fc1 if arch == "opt" else layer.mlp.c_fc)
          for i, layer in enumerate(layers)}
    items = random_items(8, seed=4)  # prompt lengths 2..9: every batch of 4 is left-padded
    groups, active, tokens = plain_hand_counts(model, items, fc)
    table = lape.activation_probability(model, items, batch_size=4, progress=False, sites=list(fc))
    assert table.groups == groups
    torch.testing.assert_close(table.prob_sums, tokens, rtol=0, atol=0)
    for name, want in active.items():
        torch.testing.assert_close(table[name], want, rtol=0, atol=0)
    assert 0 < float(active["layers.1.mlp.gate_proj"].sum()) < float(tokens.sum()) * 48


def test_one_expert_alone():
    model = family_model("mixtral", seed=1)
    items = random_items(6, seed=2)
    _, _, _, routed = hand_counts(model, items, {}, experts=model.model.layers[0].mlp.experts)
    name = "layers.0.mlp.experts.2.gate_proj"
    table = lape.activation_probability(model, items, batch_size=4, progress=False, sites=[name])
    assert table.sites == [name]
    active, n_routed = routed[name]
    assert float(n_routed.sum()) > 0
    want = torch.where(n_routed[:, None] > 0, active / n_routed.clamp(min=1)[:, None], torch.zeros_like(active))
    torch.testing.assert_close(lape.probabilities(table, name), want, rtol=1e-12, atol=1e-12)


def test_progress_bar_by_default_and_none_when_asked(capsys):
    model = tiny_model("llama")
    items = random_items(4, seed=1)
    lape.activation_probability(model, items, batch_size=2)
    err = capsys.readouterr().err
    assert re.search(r"(^|\r)activation probability: 100%\|.*\| 4/4 \[.*(item/s|s/item)\]", err), err
    lape.activation_probability(model, items, batch_size=2, progress=False)
    assert capsys.readouterr().err == ""


def test_the_table_records_its_items_and_no_clamp():
    model = tiny_model("llama")
    items = random_items(4, seed=1)
    table = lape.activation_probability(model, items, progress=False)
    assert table.metadata["clamp_min"] == "" and table.metadata["method"] == "activation_probability"
    assert table.metadata["dataset_fingerprint"] == dataset_fingerprint(as_score_items(items))
    other = lape.activation_probability(model, random_items(4, seed=2), progress=False)
    assert other.metadata["dataset_fingerprint"] != table.metadata["dataset_fingerprint"]


def test_probabilities_name_the_groups_without_tokens():
    # A has tokens, B none, C exactly one: only B is named
    sums = {"layers.0.mlp.gate_proj": torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)}
    table = ScoreTable(["A", "B", "C"], [1, 0, 1], sums, torch.tensor([4.0, 0.0, 1.0], dtype=torch.float64),
                       {"method": "activation_probability"})
    with pytest.raises(ValueError, match=re.escape("group(s) ['B'] have no tokens: no activation probability")):
        lape.probabilities(table, "layers.0.mlp.gate_proj")
    fine = ScoreTable(["A", "C"], [1, 1], {"layers.0.mlp.gate_proj": sums["layers.0.mlp.gate_proj"][[0, 2]]},
                      torch.tensor([4.0, 1.0], dtype=torch.float64), {"method": "activation_probability"})
    assert lape.probabilities(fine, "layers.0.mlp.gate_proj").tolist() == [[0.25, 0.0], [1.0, 1.0]]


@pytest.mark.parametrize("option, value", [("top_rate", 2.0), ("filter_rate", 0.0), ("filter_rate", 1.5),
                                           ("activation_bar_ratio", 0.0), ("activation_bar_ratio", 1.01)])
def test_rates_out_of_range_are_named(option, value):
    with pytest.raises(ValueError, match=re.escape(f"{option} must be in (0, 1], got {value!r}")):
        lape.select(hand_table(), **{option: value})


@pytest.mark.parametrize("kinds", [("ffn",), (), ("mlp", "ffn")])
def test_kinds_must_be_known(kinds):
    with pytest.raises(ValueError, match=re.escape("kinds must be a non-empty subset of")):
        lape.select(hand_table(), kinds=kinds)


def test_sets_record_their_parameters_and_sources():
    table = hand_table()
    sets = lape.select(table, top_rate=0.4, filter_rate=0.5, activation_bar_ratio=0.75)
    # the hand-worked example of test_lape: the 10th smallest probability 0.3, the 15th 0.6
    for group in ("A", "B"):
        assert sets[group].params == {"top_rate": 0.4, "filter_rate": 0.5, "activation_bar_ratio": 0.75,
                                      "kinds": ["mlp"], "top_prob": 0.3, "activation_bar": 0.6, "group": group}
        assert sets[group].model == "hand" and sets[group].method == "lape"
        assert sets[group].sources == {"activation": table.fingerprint()}
    unnamed = ScoreTable(table.groups, table.counts, {s: table[s] for s in table.sites}, table.prob_sums,
                         {"method": "activation_probability"})
    assert lape.select(unnamed, top_rate=0.4, filter_rate=0.5, activation_bar_ratio=0.75)["A"].model == ""


class _NoLogitsToKeep(torch.nn.Module):
    """A causal LM behind a forward that takes no ``logits_to_keep`` (as a user's own wrapper may)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache)


def test_a_forward_without_logits_to_keep():
    inner = tiny_model("llama")
    items = random_items(5, seed=6)
    _, active, tokens, _ = hand_counts(inner, items, llama_gates(inner))
    table = lape.activation_probability(_NoLogitsToKeep(inner), items, batch_size=2, progress=False)
    torch.testing.assert_close(table.prob_sums, tokens, rtol=0, atol=0)
    for name, want in active.items():
        torch.testing.assert_close(table[name], want, rtol=0, atol=0)
