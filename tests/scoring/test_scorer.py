"""culnig_ext.score against an independent float64 reference: plain autograd, item by item, no padding."""
from __future__ import annotations

import math

import pytest
import torch

import culnig_ext
from culnig_ext.data.items import ItemError
from culnig_ext.scoring.table import ScoreTable
from tests.fixtures import ARCHS, VOCAB, random_items, tiny_model
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)


def reference_site_modules(model, arch):
    """{site name: (module, start, width)} written out by hand from the architecture, independent of sites.py."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    q_w, kv_w = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    out = {}
    for i, layer in enumerate(model.model.layers):
        if arch == "phi3":
            out[f"layers.{i}.mlp.gate_proj"] = (layer.mlp.gate_up_proj, 0, cfg.intermediate_size)
            qkv = layer.self_attn.qkv_proj
            out[f"layers.{i}.self_attn.q_proj"] = (qkv, 0, q_w)
            out[f"layers.{i}.self_attn.k_proj"] = (qkv, q_w, kv_w)
            out[f"layers.{i}.self_attn.v_proj"] = (qkv, q_w + kv_w, kv_w)
        else:
            out[f"layers.{i}.mlp.gate_proj"] = (layer.mlp.gate_proj, 0, layer.mlp.gate_proj.out_features)
            for p in ("q_proj", "k_proj", "v_proj"):
                m = getattr(layer.self_attn, p)
                out[f"layers.{i}.self_attn.{p}"] = (m, 0, m.out_features)
    return out


def reference_scores(model, arch, items, clamp_min=None):
    """Float64, one item at a time: P = prod of teacher-forced target probs; score = max_t a*dP/da; sum P*score."""
    modules = reference_site_modules(model, arch)
    groups = list(dict.fromkeys(it["group"] for it in items))
    sums = {name: torch.zeros(len(groups), w, dtype=torch.float64) for name, (_, _, w) in modules.items()}
    probs = torch.zeros(len(groups), dtype=torch.float64)
    for item in items:
        targets = item["target_ids"] if "target_ids" in item else [item["answer_id"]]
        fed = torch.tensor([item["input_ids"] + targets[:-1]])
        captured = {}
        handles = []
        for name, (module, start, width) in modules.items():
            def hook(mod, args, output, key=id(module)):
                output.retain_grad()
                captured[key] = output
            if id(module) not in [h[0] for h in handles]:
                handles.append((id(module), module.register_forward_hook(hook)))
        try:
            embeds = model.get_input_embeddings()(fed).detach().requires_grad_(True)
            logits = model(inputs_embeds=embeds, use_cache=False).logits[0].double()
        finally:
            for _, h in handles:
                h.remove()
        log_probs = torch.log_softmax(logits, dim=-1)
        n_prompt = len(item["input_ids"])
        log_p = sum(log_probs[n_prompt - 1 + j, t] for j, t in enumerate(targets))
        p = torch.exp(log_p)
        p.backward()
        row = groups.index(item["group"])
        probs[row] += p.item()
        for name, (module, start, width) in modules.items():
            out = captured[id(module)]
            a = out.detach()[0, :, start : start + width]
            g = out.grad[0, :, start : start + width]
            m = (a * g).max(dim=0).values
            if clamp_min is not None:
                m = m.clamp(min=clamp_min)
            sums[name][row] += p.item() * m
    return groups, sums, probs


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("multi_token", [False, True])
def test_score_matches_float64_reference(arch, multi_token):
    model = tiny_model(arch)
    items = random_items(7, seed=3, multi_token=multi_token)
    groups, ref, ref_probs = reference_scores(model, arch, items)
    for batch_size in (1, 3, 16):
        table = culnig_ext.score(model, items, batch_size=batch_size, progress=False)
        assert table.groups == groups
        assert table.counts.tolist() == [3, 2, 2]
        torch.testing.assert_close(table.prob_sums, ref_probs, rtol=1e-9, atol=0)
        assert set(table.sites) == set(ref)
        for name, expected in ref.items():
            assert expected.abs().max() > 0, "reference is all zero: the test would be vacuous"
            torch.testing.assert_close(table[name], expected, rtol=1e-6, atol=1e-12 * expected.abs().max().item())


def test_clamp_min_matches_reference():
    model = tiny_model("llama")
    items = random_items(5, seed=1)
    groups, ref, _ = reference_scores(model, "llama", items, clamp_min=0.0)
    table = culnig_ext.score(model, items, batch_size=2, clamp_min=0.0, progress=False)
    for name, expected in ref.items():
        torch.testing.assert_close(table[name], expected, rtol=1e-6, atol=1e-15)
        assert (table[name] >= 0).all()
    assert table.metadata["clamp_min"] == "0.0"


def test_float32_close_to_float64():
    model64 = tiny_model("qwen3")
    model32 = tiny_model("qwen3", dtype=torch.float32)
    items = random_items(6, seed=5, multi_token=True)
    t64 = culnig_ext.score(model64, items, batch_size=4, progress=False)
    t32 = culnig_ext.score(model32, items, batch_size=4, progress=False)
    for name in t64.sites:
        scale = t64[name].abs().max().item()
        torch.testing.assert_close(t32[name], t64[name], rtol=1e-3, atol=1e-4 * scale)


def test_bfloat16_runs_and_is_close():
    model64 = tiny_model("llama")
    model16 = tiny_model("llama", dtype=torch.bfloat16)
    items = random_items(4, seed=2)
    t64 = culnig_ext.score(model64, items, batch_size=4, progress=False)
    t16 = culnig_ext.score(model16, items, batch_size=2, progress=False)
    for name in t64.sites:
        a, b = t16[name].flatten(), t64[name].flatten()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
        assert cos > 0.9, (name, cos)


def test_no_parameter_gets_a_gradient_and_flags_restored():
    model = tiny_model("llama")
    model.lm_head.weight.requires_grad_(True)
    model.train()
    culnig_ext.score(model, random_items(4), batch_size=2, progress=False)
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    assert model.lm_head.weight.requires_grad
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    assert hooks == 0, "hooks were left on the model"


def test_subset_of_sites_and_order_independence():
    model = tiny_model("gemma3")
    items = random_items(6, seed=9, multi_token=True)
    names = ["layers.1.mlp.gate_proj", "layers.0.self_attn.v_proj"]
    part = culnig_ext.score(model, items, batch_size=4, sites=names, progress=False)
    full = culnig_ext.score(model, list(reversed(items)), batch_size=5, progress=False,
                            groups=["A", "B", "C"])
    assert set(part.sites) == set(names)
    for name in names:
        torch.testing.assert_close(part[name], full[name], rtol=1e-9, atol=1e-15)


def test_save_load_merge_round_trip(tmp_path):
    model = tiny_model("phi3")
    items = random_items(8, seed=4, multi_token=True)
    full = culnig_ext.score(model, items, batch_size=8, progress=False)
    a = culnig_ext.score(model, items[:3], batch_size=2, progress=False)
    b = culnig_ext.score(model, items[3:], batch_size=2, progress=False)
    merged = ScoreTable.merge([a, b])
    assert merged.groups == full.groups and merged.counts.tolist() == full.counts.tolist()
    for name in full.sites:
        torch.testing.assert_close(merged[name], full[name], rtol=1e-9, atol=1e-15)
    path = tmp_path / "scores.safetensors"
    full.save(path)
    loaded = ScoreTable.load(path)
    assert loaded.groups == full.groups and loaded.sites == full.sites
    assert torch.equal(loaded.counts, full.counts) and torch.equal(loaded.prob_sums, full.prob_sums)
    for name in full.sites:
        assert torch.equal(loaded[name], full[name])
    for key in ("model", "dataset_fingerprint", "package_version", "format"):
        assert loaded.metadata[key]
    assert loaded.fingerprint() == ScoreTable.load(path).fingerprint()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_interrupted_save_leaves_old_file(tmp_path, monkeypatch):
    model = tiny_model("llama")
    table = culnig_ext.score(model, random_items(3), batch_size=3, progress=False)
    path = tmp_path / "s.safetensors"
    table.save(path)
    before = path.read_bytes()
    import culnig_ext.scoring.table as table_module

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(table_module, "save_file", broken)
    with pytest.raises(KeyboardInterrupt):
        table.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"id": "x", "input_ids": [], "answer_id": 5, "group": "A"}, "'x'.*input_ids' is empty"),
        ({"id": "y", "input_ids": [4, 5], "answer_id": VOCAB + 3, "group": "A"}, "'y'.*outside the vocabulary"),
        ({"id": "z", "input_ids": [4, 5], "group": "A"}, "'z'.*exactly one of"),
        ({"input_ids": [4, 5], "answer_id": 5, "group": "A"}, "position 1.*missing key.*'id'"),
        ({"id": "w", "input_ids": [4, 5], "answer_id": 5}, "'w'.*missing key.*'group'"),
    ],
)
def test_bad_items_are_refused_naming_the_item(bad, message):
    model = tiny_model("llama")
    good = {"id": "ok", "input_ids": [3, 4], "answer_id": 7, "group": "A"}
    with pytest.raises(ItemError, match=message):
        culnig_ext.score(model, [good, bad], progress=False)


def test_item_scores_match_reference_maxima():
    model = tiny_model("llama")
    items = random_items(5, seed=7)
    pairs = [("layers.0.mlp.gate_proj", 3), ("layers.1.self_attn.k_proj", 0), ("layers.0.mlp.gate_proj", 47)]
    got = culnig_ext.item_scores(model, items, pairs, batch_size=2, progress=False)
    modules = reference_site_modules(model, "llama")
    for row, item in enumerate(items):
        # reference for one item: its own table row divided by its P gives the unweighted max
        _, sums, probs = reference_scores(model, "llama", [item])
        for col, (site, idx) in enumerate(pairs):
            expected = (sums[site][0, idx] / probs[0]).item()
            assert math.isclose(got[row, col].item(), expected, rel_tol=1e-5, abs_tol=1e-9)
    assert modules  # the site map covered the requested sites


def test_shards_merge_to_the_full_table():
    model = tiny_model("qwen3")
    items = random_items(9, seed=11, multi_token=True)
    full = culnig_ext.score(model, items, batch_size=4, progress=False)
    shards = [culnig_ext.score(model, items, batch_size=4, progress=False, shard=(k, 3)) for k in range(3)]
    assert [t.num_items for t in shards] == [3, 3, 3]
    merged = ScoreTable.merge(shards)
    assert merged.counts.tolist() == full.counts.tolist()
    for name in full.sites:
        torch.testing.assert_close(merged[name], full[name], rtol=1e-9, atol=1e-15)
    with pytest.raises(ValueError, match="shard"):
        culnig_ext.score(model, items, shard=(3, 3), progress=False)


class _Interrupt(Exception):
    """Stands for a crash or Ctrl-C in the middle of scoring."""


def test_checkpoint_resumes_after_an_interruption(tmp_path):
    model = tiny_model("llama")
    items = random_items(10, seed=12)
    full = culnig_ext.score(model, items, batch_size=2, progress=False)
    ckpt = tmp_path / "partial.safetensors"
    calls = {"n": 0}

    def crash_on_fourth_batch(module, args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise _Interrupt()

    handle = model.model.embed_tokens.register_forward_pre_hook(crash_on_fourth_batch)
    try:
        with pytest.raises(_Interrupt):
            culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint=ckpt, checkpoint_every=1)
    finally:
        handle.remove()
    assert ckpt.is_file()
    partial = ScoreTable.load(ckpt)
    assert partial.metadata["batches_done"] == "3" and partial.num_items == 6
    # A different batch size cannot resume from it (the batches would not line up).
    with pytest.raises(ValueError, match="batch_size"):
        culnig_ext.score(model, items, batch_size=3, progress=False, checkpoint=ckpt)
    seen = []
    handle = model.model.embed_tokens.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]))
    try:
        resumed = culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint=ckpt, checkpoint_every=1)
    finally:
        handle.remove()
    assert len(seen) == 2, "only the two missing batches should run"
    assert not ckpt.exists(), "the checkpoint is removed once the table is complete"
    assert resumed.counts.tolist() == full.counts.tolist()
    for name in full.sites:
        torch.testing.assert_close(resumed[name], full[name], rtol=1e-12, atol=0)


def test_refuses_inference_mode():
    model = tiny_model("llama")
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        culnig_ext.score(model, random_items(2), progress=False)


def test_fingerprint_survives_save_and_load(tmp_path):
    table = culnig_ext.score(tiny_model("llama"), random_items(3), batch_size=3, progress=False)
    path = tmp_path / "t.safetensors"
    table.save(path)
    assert ScoreTable.load(path).fingerprint() == table.fingerprint()
    other = culnig_ext.score(tiny_model("llama"), random_items(3, seed=1), batch_size=3, progress=False)
    assert other.fingerprint() != table.fingerprint()


# ------------------------------------------------------------------------------------------------- faults
def test_out_of_memory_in_the_backward_pass_splits_the_batch(monkeypatch, caplog):
    import logging

    from culnig_ext.kernels import ops

    model = tiny_model("llama")
    items = random_items(8, seed=13, multi_token=True)
    groups, ref, ref_probs = reference_scores(model, "llama", items)
    real = ops.max_attribution_accumulate_
    calls = {"n": 0}

    def flaky(acc, act, grad, *args):
        # batches of more than 2 items run out of memory at their third site, half-way through the backward pass
        # (two sites have already added their share: those rows must be rolled back)
        calls["n"] += 1
        if act.shape[0] > 2 and calls["n"] % 3 == 0:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(acc, act, grad, *args)

    monkeypatch.setattr(ops, "max_attribution_accumulate_", flaky)
    with caplog.at_level(logging.WARNING, logger="culnig"):
        table = culnig_ext.score(model, items, batch_size=8, progress=False)
    splits = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    # 8 -> 4 + 4, each 4 -> 2 + 2: three splits, one line each
    assert splits == ["out of memory on a batch of 8 items; splitting it into 4 + 4 and retrying"] + [
        "out of memory on a batch of 4 items; splitting it into 2 + 2 and retrying"] * 2
    assert table.counts.tolist() == [3, 3, 2]
    torch.testing.assert_close(table.prob_sums, ref_probs, rtol=1e-9, atol=0)
    for name, expected in ref.items():
        torch.testing.assert_close(table[name], expected, rtol=1e-6, atol=1e-12 * expected.abs().max().item())


def test_out_of_memory_on_a_single_item_is_raised(monkeypatch):
    from culnig_ext.kernels import ops

    def always(*args):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(ops, "max_attribution_accumulate_", always)
    with pytest.raises(torch.OutOfMemoryError):
        culnig_ext.score(tiny_model("llama"), random_items(2), batch_size=2, progress=False)


def test_accumulators_live_where_offloaded_activations_arrive():
    from accelerate import cpu_offload

    items = random_items(6, seed=14)
    groups, ref, _ = reference_scores(tiny_model("llama"), "llama", items)
    model = cpu_offload(tiny_model("llama"), execution_device=torch.device("cpu"))
    gate = model.model.layers[0].mlp.gate_proj
    assert gate.weight.device.type == "meta", "the site's weights are offloaded"
    table = culnig_ext.score(model, items, batch_size=4, progress=False)
    assert table.groups == groups
    for name, expected in ref.items():
        assert table[name].device.type == "cpu"
        torch.testing.assert_close(table[name], expected, rtol=1e-6, atol=1e-12 * expected.abs().max().item())
