"""Inhibition's description and its act(0) check on the other attribute names of an MLP's activation (Phi-3's
``activation_fn``, a plain ``act``); expectations written out here."""
from __future__ import annotations

import warnings

import pytest
from torch import nn

from culnig_ext.intervention.inhibit import inhibit
from tests.fixtures import tiny_model


def test_repr_says_size_mode_and_state():
    model = tiny_model("llama")
    handle = inhibit(model, {"layers.0.mlp.gate_proj": [1, 2, 2], "layers.1.self_attn.k_proj": [0]})
    assert repr(handle) == "Inhibition(3 neurons in 2 sites, zero, active)"
    handle.remove()
    assert repr(handle) == "Inhibition(3 neurons in 2 sites, zero, removed)"
    with inhibit(model, {"layers.1.self_attn.q_proj": [4]}, mode="scale", factor=2.5) as scaled:
        assert repr(scaled) == "Inhibition(1 neurons in 1 sites, scale x2.5, active)"


@pytest.mark.parametrize("arch, attr", [("phi3", "activation_fn"), ("llama", "act")])
def test_nonzero_activation_at_zero_is_found_under_each_attribute_name(arch, attr):
    model = tiny_model(arch)
    mlp = model.model.layers[1].mlp
    if attr == "act":  # an MLP whose activation is called "act" (and has no act_fn)
        mlp.act_fn = None
    setattr(mlp, attr, nn.Sigmoid())
    with pytest.warns(UserWarning, match=r"layers\.1\.mlp\.gate_proj.*act\(0\) = 0\.5"):
        inhibit(model, {"layers.1.mlp.gate_proj": [0]}).remove()
    # a zero-at-zero activation under the same name: no warning
    setattr(mlp, attr, nn.ReLU())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inhibit(model, {"layers.1.mlp.gate_proj": [0]}).remove()


def test_the_check_looks_past_attention_sites():
    model = tiny_model("llama")
    model.model.layers[1].mlp.act_fn = nn.Sigmoid()
    chosen = {"layers.0.self_attn.q_proj": [0], "layers.0.mlp.gate_proj": [1], "layers.1.self_attn.v_proj": [2],
              "layers.1.mlp.gate_proj": [3]}
    with pytest.warns(UserWarning, match=r"layers\.1\.mlp\.gate_proj") as record:
        inhibit(model, chosen).remove()
    assert [str(w.message).split(":")[0] for w in record] == ["layers.1.mlp.gate_proj"]


def test_the_index_moved_to_a_device_is_kept_and_reused():
    import torch

    from culnig_ext.intervention.inhibit import _ModuleHook

    hook = _ModuleHook(torch.tensor([0, 2]), "zero", None)
    linear = nn.Linear(3, 4)
    hook(linear, (), torch.ones(2, 4, device="meta"))
    first = hook._by_device[torch.device("meta")]
    assert first.device.type == "meta" and first.shape == (2,)
    hook(linear, (), torch.ones(1, 4, device="meta"))
    assert hook._by_device[torch.device("meta")] is first  # moved once, not on every call
    hook(linear, (), torch.ones(1, 4))
    assert torch.equal(hook._by_device[torch.device("cpu")], torch.tensor([0, 2]))


def test_index_types_defaults_and_attributes():
    import torch

    from culnig_ext.intervention.inhibit import Inhibition

    model = tiny_model("llama")
    ids = torch.tensor([[5, 6, 7]])
    with inhibit(model, {"layers.0.mlp.gate_proj": torch.tensor([1, 4])}):
        want = model(ids).logits
    for indices in (torch.tensor([1, 4], dtype=torch.int32), [4, 1], (1, 4), torch.tensor([[1], [4]])):
        with inhibit(model, {"layers.0.mlp.gate_proj": indices}) as handle:
            assert handle.indices["layers.0.mlp.gate_proj"].dtype == torch.int64
            torch.testing.assert_close(model(ids).logits, want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="indices must be integers"):
        inhibit(model, {"layers.0.mlp.gate_proj": torch.tensor([True, False])})
    plain = Inhibition(model, {"layers.0.mlp.gate_proj": [1, 4]})  # the class's own defaults: zero mode
    try:
        assert plain.mode == "zero" and plain.factor is None
        torch.testing.assert_close(model(ids).logits, want, rtol=0, atol=0)
    finally:
        plain.remove()
    with inhibit(model, {"layers.0.mlp.gate_proj": [1]}, mode="scale", factor=2) as scaled:
        assert scaled.mode == "scale" and scaled.factor == 2.0 and isinstance(scaled.factor, float)
    for bad in (True, "2", None, float("inf")):
        with pytest.raises(ValueError, match="factor"):
            inhibit(model, {"layers.0.mlp.gate_proj": [1]}, mode="scale", factor=bad)


def test_a_failing_hook_removal_is_reported_after_removing_the_others():
    model = tiny_model("llama")
    handle = inhibit(model, {"layers.0.mlp.gate_proj": [1], "layers.1.mlp.gate_proj": [2]})

    class Stuck:
        def remove(self):
            raise RuntimeError("stuck hook")

    real = list(handle._handles)
    handle._handles = [Stuck()] + real
    with pytest.raises(RuntimeError, match=r"failed to remove 1 inhibition hook\(s\): RuntimeError\('stuck hook'\)") \
            as info:
        handle.remove()
    assert isinstance(info.value.__cause__, RuntimeError) and str(info.value.__cause__) == "stuck hook"
    assert not handle.active
    assert all(not m._forward_hooks for m in model.modules())


def test_an_empty_site_does_not_stop_the_others():
    model = tiny_model("llama")
    import torch

    empty = torch.tensor([], dtype=torch.int64)
    with inhibit(model, {"layers.0.mlp.gate_proj": empty, "layers.1.mlp.gate_proj": [3],
                         "layers.1.self_attn.k_proj": [1]}) as handle:
        assert sorted(handle.indices) == ["layers.1.mlp.gate_proj", "layers.1.self_attn.k_proj"]
        assert handle.num_neurons == 2 and len(handle._handles) == 2
