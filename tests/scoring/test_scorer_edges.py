"""The scorer's bookkeeping around the numbers (the numbers themselves are checked in test_scorer.py against a
float64 reference): metadata, group order, shard arguments, checkpoint cadence and refusals, item_scores' neuron
arguments, the model's flags after a call. Expectations are written out here."""
from __future__ import annotations

import math

import pytest
import torch

import culnig_ext
from culnig_ext.scoring.scorer import dataset_fingerprint
from culnig_ext.data.items import as_score_items
from culnig_ext.scoring.table import ScoreTable
from tests.fixtures import random_items, tiny_model
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


def test_metadata_names_model_revision_items_and_clamp(model):
    items = random_items(4, seed=1)
    model.config._name_or_path = "org/tiny"
    model.config._commit_hash = "abc123"
    try:
        t = culnig_ext.score(model, items, batch_size=4, progress=False, clamp_min=0)
    finally:
        model.config._name_or_path = ""
        model.config._commit_hash = None
    assert t.metadata["model"] == "org/tiny" and t.metadata["revision"] == "abc123"
    assert t.metadata["clamp_min"] == "0.0"
    assert t.metadata["package_version"] == culnig_ext.__version__
    assert t.metadata["dataset_fingerprint"] == dataset_fingerprint(as_score_items(items))
    unnamed = culnig_ext.score(model, items, batch_size=4, progress=False)
    assert unnamed.metadata["model"] == "LlamaForCausalLM" and unnamed.metadata["revision"] == ""
    assert unnamed.metadata["clamp_min"] == ""


def test_dataset_fingerprint_ignores_order_and_sees_every_field():
    items = as_score_items(random_items(4, seed=2, multi_token=True))
    base = dataset_fingerprint(items)
    assert len(base) == 16 and dataset_fingerprint(items[::-1]) == base
    first = items[0]
    variants = [
        first.__class__(id="other", input_ids=first.input_ids, target_ids=first.target_ids, group=first.group),
        first.__class__(id=first.id, input_ids=first.input_ids, target_ids=first.target_ids, group="Z"),
        first.__class__(id=first.id, input_ids=first.input_ids + (5,), target_ids=first.target_ids,
                        group=first.group),
        first.__class__(id=first.id, input_ids=first.input_ids, target_ids=first.target_ids + (5,),
                        group=first.group),
    ]
    prints = {dataset_fingerprint([v] + items[1:]) for v in variants}
    assert len(prints) == 4 and base not in prints


def test_groups_argument_sets_the_row_order(model):
    items = random_items(6, seed=3)  # groups A, B, C in turn
    default = culnig_ext.score(model, items, batch_size=6, progress=False)
    assert default.groups == ["A", "B", "C"]
    ordered = culnig_ext.score(model, items, batch_size=6, progress=False, groups=["C", "D", "A", "B"])
    assert ordered.groups == ["C", "D", "A", "B"]
    assert ordered.counts.tolist() == [2, 0, 2, 2] and ordered.prob_sums[1] == 0
    for site in default.sites:
        assert torch.equal(ordered[site][[2, 3, 0]], default[site])
        assert torch.equal(ordered[site][1], torch.zeros_like(ordered[site][1]))
    with pytest.raises(ValueError, match=r"group\(s\) \['C'\] not in groups"):
        culnig_ext.score(model, items, progress=False, groups=["A", "B"])


@pytest.mark.parametrize("shard", [(-1, 3), (3, 3), (0, 0), (1.0, 3), (0, 2.0)])
def test_bad_shards_are_refused(model, shard):
    with pytest.raises(ValueError, match="shard"):
        culnig_ext.score(model, random_items(3), progress=False, shard=shard)


def test_shard_items_and_an_empty_shard(model):
    items = random_items(5, seed=4)
    last = culnig_ext.score(model, items, batch_size=5, progress=False, shard=(4, 5))
    assert last.num_items == 1 and last.groups == [items[4]["group"]]
    single = culnig_ext.score(model, [items[4]], batch_size=1, progress=False)
    for site in single.sites:
        torch.testing.assert_close(last[site], single[site], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="no items"):
        culnig_ext.score(model, items[:2], progress=False, shard=(2, 3))


def test_batch_size_one_and_zero(model):
    items = random_items(3, seed=5)
    ones = culnig_ext.score(model, items, batch_size=1, progress=False)
    alls = culnig_ext.score(model, items, batch_size=3, progress=False)
    assert ones.counts.tolist() == [1, 1, 1]
    for site in alls.sites:
        torch.testing.assert_close(ones[site], alls[site], rtol=1e-9, atol=1e-15)
    with pytest.raises(ValueError, match="batch_size"):
        culnig_ext.score(model, items, batch_size=0, progress=False)


class _Crash(Exception):
    """An interruption injected into scoring."""


def test_checkpoint_cadence_and_refusal_of_other_sites_or_groups(model, tmp_path):
    items = random_items(10, seed=6)
    ckpt = tmp_path / "c.safetensors"
    saved_at = []
    real_save = ScoreTable.save

    def spy(self, path):
        saved_at.append(self.metadata.get("batches_done"))
        return real_save(self, path)

    calls = {"n": 0}

    def crash(module, args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise _Crash()

    ScoreTable.save = spy
    handle = model.get_input_embeddings().register_forward_pre_hook(crash)
    try:
        with pytest.raises(_Crash):
            culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint=ckpt, checkpoint_every=2)
    finally:
        handle.remove()
        ScoreTable.save = real_save
    assert saved_at == ["2", "4"]  # every second batch; the fifth crashed
    partial = ScoreTable.load(ckpt)
    assert partial.num_items == 8 and partial.metadata["batch_size"] == "2"
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match="sites_hash"):
        culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint=ckpt,
                         sites=["layers.0.mlp.gate_proj"])
    with pytest.raises(ValueError, match="fixed_groups"):
        culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint=ckpt, groups=["C", "B", "A"])
    assert ckpt.read_bytes() == before
    resumed = culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint=ckpt)
    full = culnig_ext.score(model, items, batch_size=2, progress=False)
    assert resumed.counts.tolist() == full.counts.tolist() and not ckpt.exists()
    assert "batches_done" not in resumed.metadata and "batch_size" not in resumed.metadata
    for site in full.sites:
        torch.testing.assert_close(resumed[site], full[site], rtol=1e-12, atol=0)


def test_flags_restored_after_scoring(model):
    model.train()
    model.model.layers[0].mlp.gate_proj.weight.requires_grad_(False)
    try:
        culnig_ext.score(model, random_items(2), batch_size=2, progress=False)
        assert model.training
        flags = {n: p.requires_grad for n, p in model.named_parameters()}
        assert flags.pop("model.layers.0.mlp.gate_proj.weight") is False and all(flags.values())
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()
        model.model.layers[0].mlp.gate_proj.weight.requires_grad_(True)


def test_item_scores_take_neuron_sets_and_pairs_and_refuse_bad_ones(model):
    from culnig_ext.selection.neurons import NeuronSet

    items = random_items(4, seed=7)
    pairs = [("layers.1.self_attn.v_proj", 2), ("layers.0.mlp.gate_proj", 5)]
    by_pairs = culnig_ext.item_scores(model, items, pairs, batch_size=3, progress=False)
    by_set = culnig_ext.item_scores(model, items, NeuronSet.from_pairs(pairs), batch_size=4, progress=False)
    assert by_pairs.shape == (4, 2) and by_pairs.dtype == torch.float32
    # a NeuronSet iterates in its own (model) order: gate first
    torch.testing.assert_close(by_set, by_pairs[:, [1, 0]], rtol=1e-5, atol=1e-9)
    single = culnig_ext.item_scores(model, items, pairs[:1], batch_size=1, progress=False)
    torch.testing.assert_close(single[:, 0], by_pairs[:, 0], rtol=1e-5, atol=1e-9)
    assert not math.isclose(float(by_pairs.abs().sum()), 0.0)
    with pytest.raises(ValueError, match="no neurons"):
        culnig_ext.item_scores(model, items, [], progress=False)
    with pytest.raises(ValueError, match=r"index 48 outside \[0, 48\)"):
        culnig_ext.item_scores(model, items, [("layers.0.mlp.gate_proj", 48)], progress=False)
    with pytest.raises(ValueError, match=r"index -1 outside"):
        culnig_ext.item_scores(model, items, [("layers.0.mlp.gate_proj", -1)], progress=False)


def test_item_scores_check_items_against_the_vocabulary(model):
    from culnig_ext.data.items import ItemError

    bad = {"id": "far", "input_ids": [3, 4], "answer_id": model.config.vocab_size, "group": "A"}
    with pytest.raises(ItemError, match="'far'.*outside the vocabulary"):
        culnig_ext.item_scores(model, [bad], [("layers.0.mlp.gate_proj", 0)], progress=False)
