"""Activation checkpointing (culnig_ext.models.checkpointing): the same table as without it and as an independent float64
reference, one attribution per site and item under recomputation, less saved for the backward pass, and the model
left as it was."""
from __future__ import annotations

import pytest
import torch

import culnig_ext
from culnig_ext.models import checkpointing
from culnig_ext.cli.main import build_parser
from tests.fixtures import ARCHS, random_items, tiny_model
from tests.scoring.test_scorer import reference_scores


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpointed_table_equals_plain_and_reference(arch):
    model = tiny_model(arch)
    items = random_items(7, seed=11, multi_token=True)
    groups, ref, ref_probs = reference_scores(model, arch, items)
    plain = culnig_ext.score(model, items, batch_size=3, progress=False)
    ckpt = culnig_ext.score(model, items, batch_size=3, progress=False, checkpoint_activations=True)
    assert ckpt.groups == groups and ckpt.counts.tolist() == plain.counts.tolist()
    torch.testing.assert_close(ckpt.prob_sums, ref_probs, rtol=1e-9, atol=0)
    assert set(ckpt.sites) == set(ref)
    for name, expected in ref.items():
        assert expected.abs().max() > 0
        # Twice the attribution (a second gradient hook from the recomputation) would be off by 2x.
        torch.testing.assert_close(ckpt[name], expected, rtol=1e-6, atol=1e-12 * expected.abs().max().item())
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-12, atol=0)


def test_one_attribution_per_site_and_batch_under_recomputation(monkeypatch):
    model = tiny_model("llama")
    items = random_items(5, seed=2)
    calls: dict[str, int] = {}
    real = culnig_ext.kernels.ops.max_attribution_accumulate_

    def counting(acc, act, *args, **kwargs):
        calls[acc.data_ptr()] = calls.get(acc.data_ptr(), 0) + 1
        return real(acc, act, *args, **kwargs)

    monkeypatch.setattr(culnig_ext.kernels.ops, "max_attribution_accumulate_", counting)
    phases = []
    layer = checkpointing.decoder_layers(model)[0]
    handle = layer.self_attn.q_proj.register_forward_hook(lambda *a: phases.append(checkpointing.phase()))
    try:
        culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint_activations=True)
    finally:
        handle.remove()
    n_batches, n_sites = 3, 4 * model.config.num_hidden_layers
    assert len(calls) == n_sites and set(calls.values()) == {n_batches}
    assert phases == ["forward", "recompute"] * n_batches  # the hooks did fire twice per batch
    assert checkpointing.phase() == "plain"


def _saved_bytes(model, items, **kwargs) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        culnig_ext.score(model, items, batch_size=8, progress=False, **kwargs)
    return total


def test_forward_saves_less_and_model_is_restored():
    model = tiny_model("qwen3")
    items = random_items(8, seed=4, min_len=20, max_len=30)
    layers = checkpointing.decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers
    # Recomputation packs again in the backward pass, so count only what the forward pass keeps: a hook that
    # runs in the forward phase sees the plain run's tensors; with checkpointing only layer inputs are kept.
    plain = _saved_bytes(model, items)
    ckpt_forward = 0

    def pack(t):
        nonlocal ckpt_forward
        if checkpointing.phase() != "recompute":
            ckpt_forward += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        culnig_ext.score(model, items, batch_size=8, progress=False, checkpoint_activations=True)
    assert 0 < ckpt_forward < plain / 2, (ckpt_forward, plain)
    assert all("forward" not in layer.__dict__ for layer in layers)  # the wrapper is gone


def test_layers_restored_after_an_error():
    model = tiny_model("llama")
    layers = checkpointing.decoder_layers(model)
    with pytest.raises(RuntimeError, match="boom"):
        with checkpointing.checkpointed_layers(model) as n:
            assert n == len(layers) and all("forward" in layer.__dict__ for layer in layers)
            raise RuntimeError("boom")
    assert all("forward" not in layer.__dict__ for layer in layers)


def test_model_without_layer_list_is_refused():
    model = torch.nn.Module()
    model.config = type("C", (), {"num_hidden_layers": 3})()
    with pytest.raises(ValueError, match="cannot checkpoint activations: cannot find the decoder layers of Module"):
        with checkpointing.checkpointed_layers(model):
            pytest.fail("checkpointed_layers accepted a model without a layer list")


@pytest.mark.parametrize("command", [["score", "--model", "m", "--data", "d", "--out", "o"], ["run"]])
def test_cli_flag(command):
    assert build_parser().parse_args(command + ["--checkpoint-activations"]).checkpoint_activations is True
    assert build_parser().parse_args(command).checkpoint_activations is False
