"""Edges of scorer.py that the mutation check found unguarded; expectations from the float64 reference in
test_scorer.py (plain autograd), never from the scorer."""
from __future__ import annotations

import math

import torch

import culnig_ext
from tests.scoring.test_scorer import reference_scores
from tests.fixtures import random_items, tiny_model


def test_item_scores_of_a_single_group_match_the_reference():
    # Every item in one group: per-item scores do not depend on groups, and one group must not be refused.
    model = tiny_model("llama")
    items = [dict(item, group="only") for item in random_items(3, seed=5)]
    pairs = [("layers.0.mlp.gate_proj", 1), ("layers.1.self_attn.q_proj", 2)]
    got = culnig_ext.item_scores(model, items, pairs, batch_size=2, progress=False)
    for row, item in enumerate(items):
        _, sums, probs = reference_scores(model, "llama", [item])
        for col, (site, idx) in enumerate(pairs):
            expected = (sums[site][0, idx] / probs[0]).item()
            assert math.isclose(got[row, col].item(), expected, rel_tol=1e-5, abs_tol=1e-9)


def test_accumulators_snapshot_grows_rows_and_fills_untouched_sites():
    # The streaming scorer adds group rows as new groups appear, and a snapshot may come before a site's first
    # gradient: cpu() must hand back [G, N] float64 for every site, old sums kept, new rows and untouched sites 0.
    from collections import namedtuple

    import torch

    from culnig_ext.scoring.scorer import _Accumulators

    Site = namedtuple("Site", "name width")
    acc = _Accumulators([Site("a", 3), Site("b", 2)], n_groups=1)
    got = acc.get("a", torch.device("cpu"))
    got += torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    acc.rows = 3  # two groups appeared since
    out = acc.cpu()
    assert out["a"].dtype == torch.float64 and out["b"].dtype == torch.float64
    assert out["a"].tolist() == [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert out["b"].tolist() == [[0.0, 0.0]] * 3
    # A later update lands in the grown accumulator, not in a stale copy.
    acc.get("a", torch.device("cpu"))[2, 0] += 5.0
    assert acc.cpu()["a"].tolist() == [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, 0.0, 0.0]]


def test_table_provenance_records_empty_defaults_the_clamp_and_extras_as_strings():
    # Expectations written out: the model's provenance, then the table's own fields ("" when unset; the clamp as
    # repr(float)), then the caller's extras as strings, overriding.
    from culnig_ext.scoring.provenance import model_provenance
    from culnig_ext.scoring.scorer import table_provenance

    model = tiny_model("llama")
    base = model_provenance(model)
    assert table_provenance(model, None) == {**base, "prompt_format": "", "control": "", "clamp_min": ""}
    assert table_provenance(model, 0)["clamp_min"] == "0.0"
    assert table_provenance(model, -0.25)["clamp_min"] == "-0.25"
    got = table_provenance(model, None, {"control": "ctrl", "prompt_format": 3})
    assert got == {**base, "prompt_format": "3", "control": "ctrl", "clamp_min": ""}


def _hash_of_sites(table) -> str:
    # The resume key's site hash, written out: sha256 of the (name, width) list in the table's site order.
    import hashlib

    pairs = [(site, int(table[site].shape[1])) for site in table.sites]
    return hashlib.sha256(repr(pairs).encode()).hexdigest()[:16]


def test_a_kept_checkpoint_records_the_whole_resume_key_and_the_final_sums(tmp_path):
    import json

    import torch

    from culnig_ext.scoring.table import ScoreTable

    model = tiny_model("llama")
    items = random_items(7, seed=41)
    ckpt = tmp_path / "k.safetensors"
    table = culnig_ext.score(model, items, batch_size=2, window=3, shard=(1, 2), max_items=6, groups=["C", "B", "A"],
                             checkpoint=ckpt, checkpoint_every=1, keep_checkpoint=True, progress=False,
                             provenance={"control": "ctrl"})
    own = items[1:6:2]  # shard 1 of 2 of the first six items
    assert table.groups == ["C", "B", "A"]
    assert table.counts.tolist() == [sum(it["group"] == g for it in own) for g in ["C", "B", "A"]]
    saved = ScoreTable.load(ckpt)
    meta = saved.metadata
    want = {"batch_size": "2", "window": "3", "shard": "1/2", "max_items": "6", "world": "1", "rank": "0",
            "fixed_groups": json.dumps(["C", "B", "A"]), "control": "ctrl", "clamp_min": "", "prompt_format": "",
            "checkpoint": "culnig-checkpoint/1", "batches_done": "2", "sites_hash": _hash_of_sites(table)}
    assert {k: meta.get(k) for k in want} == want
    assert saved.groups == table.groups and saved.counts.tolist() == table.counts.tolist()
    torch.testing.assert_close(saved.prob_sums, table.prob_sums, rtol=0, atol=0)
    for site in table.sites:
        torch.testing.assert_close(saved[site], table[site], rtol=0, atol=0)
    # Without shard, item limit or fixed groups, those key fields are empty (not "None").
    ckpt2 = tmp_path / "k2.safetensors"
    culnig_ext.score(model, items[:3], batch_size=3, checkpoint=ckpt2, checkpoint_every=1, keep_checkpoint=True,
                     progress=False)
    meta2 = ScoreTable.load(ckpt2).metadata
    assert {k: meta2.get(k) for k in ("shard", "max_items", "fixed_groups", "batch_size", "window", "batches_done")} \
        == {"shard": "", "max_items": "", "fixed_groups": "", "batch_size": "3", "window": "32", "batches_done": "1"}


def test_two_ranks_split_the_batches_and_their_reduced_sums_match_the_reference(monkeypatch):
    # torch.distributed replaced by an in-process stand-in (the real two-process job is in test_distributed.py,
    # out of the mutation run's reach): rank 1 scores first and its all-reduce returns its own part; rank 0's
    # all-reduce adds rank 1's part, so rank 0's table must be the whole float64 reference.
    import torch

    from culnig_ext.scoring import distributed as dmod
    from tests.scoring.test_scorer import reference_scores

    model = tiny_model("llama")
    items = random_items(7, seed=43, multi_token=True)
    parts, checks = {}, []

    def run(rank, other):
        def reduce(job, tensors):
            assert job.rank == rank and job.world == 2
            parts[rank] = [t.detach().clone() for t in tensors]
            return [t.detach().clone() + (0 if other is None else o) for t, o in zip(tensors, other or tensors)]

        monkeypatch.setattr(dmod, "discover", lambda distributed=None: dmod.Dist(rank, 2, torch.device("cpu")))
        monkeypatch.setattr(dmod, "check", lambda job, ok: checks.append((job.rank, ok)))
        monkeypatch.setattr(dmod, "all_reduce_sum", reduce)
        monkeypatch.setattr(dmod, "close", lambda job: checks.append((job.rank, "closed")))
        return culnig_ext.score(model, items, batch_size=2, progress=False)

    one = run(1, None)
    zero = run(0, parts[1])
    n1, n0 = int(parts[1][0].sum()), int(parts[0][0].sum())
    assert n1 > 0 and n0 > 0 and n0 + n1 == len(items)  # a disjoint split of every item
    assert one.counts.tolist() == parts[1][0].tolist()
    assert checks.count((1, True)) >= 1 and checks.count((0, True)) >= 1
    assert checks[-1] == (0, "closed") and checks.count((1, "closed")) == 1
    assert not [c for c in checks if c[1] is False]
    groups, sums, probs = reference_scores(model, "llama", items)
    order = [zero.groups.index(g) for g in groups]
    assert zero.counts[order].tolist() == [sum(it["group"] == g for it in items) for g in groups]
    torch.testing.assert_close(zero.prob_sums[order], probs, rtol=1e-5, atol=0)
    for site in sums:
        assert zero[site].dtype == torch.float64
        torch.testing.assert_close(zero[site][order], sums[site], rtol=1e-4, atol=1e-10)
    assert zero.metadata["dataset_fingerprint"] == one.metadata["dataset_fingerprint"]
    assert zero.item_hashes is not None and len(zero.item_hashes) == len(items)


def test_a_failing_rank_tells_the_others_and_raises_its_own_error(monkeypatch):
    import pytest
    import torch

    from culnig_ext.scoring import distributed as dmod

    model = tiny_model("llama")
    checks = []
    monkeypatch.setattr(dmod, "discover", lambda distributed=None: dmod.Dist(0, 2, torch.device("cpu")))
    monkeypatch.setattr(dmod, "check", lambda job, ok: checks.append((job.rank, ok)))
    monkeypatch.setattr(dmod, "close", lambda job: None)

    def crash(module, args):
        raise KeyError("boom")

    handle = model.get_input_embeddings().register_forward_pre_hook(crash)
    try:
        with pytest.raises(KeyError, match="boom"):
            culnig_ext.score(model, random_items(4, seed=44), batch_size=2, progress=False)
    finally:
        handle.remove()
    assert checks == [(0, False)]


def test_checkpoint_seconds_alone_makes_snapshots_due(tmp_path, monkeypatch):
    # checkpoint_every far away, checkpoint_seconds=0: every batch ends "too long" after the last snapshot.
    import pytest

    from culnig_ext.scoring.table import ScoreTable

    model = tiny_model("llama")
    saved_at = []
    real_save = ScoreTable.save

    def spy(self, path):
        saved_at.append(self.metadata.get("batches_done"))
        return real_save(self, path)

    monkeypatch.setattr(ScoreTable, "save", spy)
    calls = {"n": 0}

    def crash(module, args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyError("stop")

    handle = model.get_input_embeddings().register_forward_pre_hook(crash)
    try:
        with pytest.raises(KeyError):
            culnig_ext.score(model, random_items(8, seed=45), batch_size=2, progress=False,
                             checkpoint=tmp_path / "t.safetensors", checkpoint_every=1000, checkpoint_seconds=0.0)
    finally:
        handle.remove()
    assert saved_at == ["1", "2"]


def test_each_rank_keeps_its_own_checkpoint_file(tmp_path, monkeypatch):
    import torch

    from culnig_ext.scoring import distributed as dmod

    model = tiny_model("llama")
    monkeypatch.setattr(dmod, "discover", lambda distributed=None: dmod.Dist(1, 2, torch.device("cpu")))
    monkeypatch.setattr(dmod, "check", lambda job, ok: None)
    monkeypatch.setattr(dmod, "all_reduce_sum", lambda job, tensors: [t.clone() for t in tensors])
    monkeypatch.setattr(dmod, "close", lambda job: None)
    ckpt = tmp_path / "r.safetensors"
    culnig_ext.score(model, random_items(4, seed=46), batch_size=1, progress=False, checkpoint=ckpt,
                     checkpoint_every=1, keep_checkpoint=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.safetensors.rank1-of-2"]


def _assert_matches_reference(model, items, table):
    import torch

    from tests.scoring.test_scorer import reference_scores

    groups, sums, probs = reference_scores(model, "llama", items)
    order = [table.groups.index(g) for g in groups]
    assert table.counts[order].tolist() == [sum(it["group"] == g for it in items) for g in groups]
    torch.testing.assert_close(table.prob_sums[order], probs, rtol=1e-6, atol=0)
    for site, expected in sums.items():
        torch.testing.assert_close(table[site][order], expected, rtol=1e-6, atol=1e-12)


def test_out_of_memory_on_two_items_splits_them_into_one_and_one(monkeypatch):
    import torch

    from culnig_ext.kernels import ops

    model = tiny_model("llama")
    items = random_items(2, seed=47)
    real = ops.max_attribution_accumulate_

    def flaky(acc, act, grad, *args):
        if act.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(acc, act, grad, *args)

    monkeypatch.setattr(ops, "max_attribution_accumulate_", flaky)
    _assert_matches_reference(model, items, culnig_ext.score(model, items, batch_size=2, progress=False))


def test_checkpointed_activations_are_recomputed_and_give_the_reference_table():
    model = tiny_model("llama")
    items = random_items(3, seed=48)
    calls = []
    handle = model.model.layers[0].mlp.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        table = culnig_ext.score(model, items, batch_size=3, progress=False, checkpoint_activations=True)
    finally:
        handle.remove()
    assert len(calls) == 2  # one batch: its forward pass, and the layer's recomputation in the backward pass
    _assert_matches_reference(model, items, table)
    handle = model.model.layers[0].mlp.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        culnig_ext.score(model, items, batch_size=3, progress=False)
    finally:
        handle.remove()
    assert len(calls) == 3  # without checkpointing: the forward pass only


def test_resume_at_a_window_boundary_checks_the_items_once(tmp_path):
    # One batch per window, snapshot after batch 2 = the end of window 2: the resumed run checks the items read
    # up to there (refusing other items) and not again in window 3 (where more items have been read).
    import pytest

    from culnig_ext.scoring.resume import CheckpointError

    model = tiny_model("llama")
    items = random_items(8, seed=49)
    ckpt = tmp_path / "w.safetensors"
    calls = {"n": 0}

    def crash(module, args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyError("stop")

    handle = model.get_input_embeddings().register_forward_pre_hook(crash)
    try:
        with pytest.raises(KeyError):
            culnig_ext.score(model, items, batch_size=2, window=1, progress=False, checkpoint=ckpt,
                             checkpoint_every=1)
    finally:
        handle.remove()
    before = ckpt.read_bytes()
    with pytest.raises(CheckpointError, match="other items"):
        culnig_ext.score(model, random_items(8, seed=50), batch_size=2, window=1, progress=False, checkpoint=ckpt,
                         checkpoint_every=1)
    assert ckpt.read_bytes() == before
    resumed = culnig_ext.score(model, items, batch_size=2, window=1, progress=False, checkpoint=ckpt,
                               checkpoint_every=1)
    _assert_matches_reference(model, items, resumed)


def test_a_crash_between_snapshots_saves_the_completed_batches_and_says_so(tmp_path, caplog):
    # No periodic snapshot is due (every 1000 batches, 10^9 s): the only one is written on the way out, for the
    # batches completed before the crash, and the error says where; resuming from it gives the reference table.
    import logging

    import pytest

    from culnig_ext.scoring.table import ScoreTable

    model = tiny_model("llama")
    items = random_items(8, seed=51)
    ckpt = tmp_path / "x.safetensors"
    calls = {"n": 0}

    def crash(module, args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyError("stop")

    kw = dict(batch_size=2, progress=False, checkpoint=ckpt, checkpoint_every=1000, checkpoint_seconds=1e9)
    handle = model.get_input_embeddings().register_forward_pre_hook(crash)
    try:
        with caplog.at_level(logging.WARNING, logger="culnig"), pytest.raises(KeyError) as info:
            culnig_ext.score(model, items, **kw)
    finally:
        handle.remove()
    assert info.value.__notes__ == [f"scoring stopped after batch 2; progress is saved in {ckpt}: run the same "
                                    "command (the same score() call) again to resume"]
    assert not [r for r in caplog.records if "could not tell" in r.getMessage()]  # a single process tells nobody
    saved = ScoreTable.load(ckpt)
    assert saved.metadata["batches_done"] == "2" and saved.num_items == 4
    _assert_matches_reference(model, items, culnig_ext.score(model, items, **kw))


def test_a_refused_checkpoint_is_neither_rewritten_nor_annotated(tmp_path):
    import pytest

    from culnig_ext.scoring.resume import CheckpointError

    model = tiny_model("llama")
    ckpt = tmp_path / "y.safetensors"
    ckpt.write_bytes(b"not a table")
    with pytest.raises(CheckpointError) as info:
        culnig_ext.score(model, random_items(4, seed=52), batch_size=2, progress=False, checkpoint=ckpt)
    assert ckpt.read_bytes() == b"not a table" and not getattr(info.value, "__notes__", [])


def test_an_empty_shard_is_named_with_the_number_of_items():
    import pytest

    from culnig_ext.data.items import ItemError

    with pytest.raises(ItemError, match=r"^shard \(1, 2\) has no items \(1 items in all\)$"):
        culnig_ext.score(tiny_model("llama"), random_items(1, seed=53), progress=False, shard=(1, 2))
    with pytest.raises(ItemError, match="^no items to score$"):
        culnig_ext.score(tiny_model("llama"), [], progress=False)


def test_distributed_true_without_a_job_is_refused(monkeypatch):
    import pytest

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="distributed=True"):
        culnig_ext.score(tiny_model("llama"), random_items(2, seed=54), progress=False, distributed=True)


def test_target_log_probs_of_bfloat16_logits_are_computed_in_float32():
    # log P(y|x) summed over the masked target positions, against float64 on the same (exactly representable)
    # bfloat16 logits: a bfloat16 softmax would be off by ~1e-2.
    import torch

    from culnig_ext.scoring.scorer import Batch, target_log_probs

    g = torch.Generator().manual_seed(55)
    logits = (torch.randn(2, 3, 97, generator=g) * 8).to(torch.bfloat16)
    targets = torch.tensor([[0, 5, 7], [11, 13, 17]])
    mask = torch.tensor([[False, True, True], [True, True, True]])
    batch = Batch([0, 1], None, None, None, targets, mask, torch.zeros(2, dtype=torch.int64), 0)
    got = target_log_probs(logits, batch)
    ref = torch.log_softmax(logits.double(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    want = (ref * mask).sum(dim=1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_input_device_follows_an_offloaded_embedding_hook():
    """Input ids go to the embedding's device; with accelerate-offloaded (``meta``) weights, to its hook's
    execution device, else the CPU. Hand-built modules: a real device, and a meta one with and without a hook."""
    from types import SimpleNamespace

    from torch import nn

    from culnig_ext.scoring.scorer import input_device

    class Model(nn.Module):
        def __init__(self, device):
            super().__init__()
            self.embed = nn.Embedding(4, 2, device=device)

        def get_input_embeddings(self):
            return self.embed

    assert input_device(Model("cpu")) == torch.device("cpu")
    offloaded = Model("meta")
    assert input_device(offloaded) == torch.device("cpu")  # no hook: the CPU
    offloaded.embed._hf_hook = SimpleNamespace(execution_device="meta")
    got = input_device(offloaded)
    assert isinstance(got, torch.device) and got == torch.device("meta")  # the hook's device, not the default
    offloaded.embed._hf_hook = SimpleNamespace(execution_device=None)
    assert input_device(offloaded) == torch.device("cpu")
    offloaded.embed._hf_hook = SimpleNamespace()  # a hook without an execution device
    assert input_device(offloaded) == torch.device("cpu")
