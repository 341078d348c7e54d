"""inhibit(): hooks vs an independent weight-level ablation on tiny models of every architecture."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from culnig_ext.intervention.inhibit import Inhibition, inhibit
from culnig_ext.selection.neurons import NeuronSet
from tests.fixtures import ARCHS, VOCAB, tiny_model

# Neurons spread over both layers and all four site kinds (hidden 32, 4 heads of 8, 2 kv heads, MLP 48).
CHOSEN = {
    "layers.0.mlp.gate_proj": [1, 5, 47],
    "layers.1.mlp.gate_proj": [0, 30],
    "layers.0.self_attn.k_proj": [3],
    "layers.1.self_attn.q_proj": [0, 9, 31],
    "layers.1.self_attn.v_proj": [15, 2],
}


def _inputs(seed: int = 0, batch: int = 3, length: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _rows(model: nn.Module, layer: int, site: str) -> tuple[nn.Linear, int]:
    """The weight holding ``site``'s rows and their offset, found from the config (not from culnig_ext.models.sites)."""
    block = model.model.layers[layer]
    cfg = model.config
    if site == "mlp.gate_proj":
        if hasattr(block.mlp, "gate_proj"):
            return block.mlp.gate_proj, 0
        return block.mlp.gate_up_proj, 0  # Phi-3: [gate; up]
    proj = site.split(".")[1]
    if hasattr(block.self_attn, proj):
        return getattr(block.self_attn, proj), 0
    head_dim = cfg.hidden_size // cfg.num_attention_heads  # Phi-3: [q; k; v]
    q, kv = cfg.num_attention_heads * head_dim, cfg.num_key_value_heads * head_dim
    return block.self_attn.qkv_proj, {"q_proj": 0, "k_proj": q, "v_proj": q + kv}[proj]


def _weight_ablated(model: nn.Module, chosen: dict[str, list[int]]) -> nn.Module:
    """A deep copy with the chosen neurons' weight rows (and bias entries) set to zero."""
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        for name, indices in chosen.items():
            _, layer, *rest = name.split(".")
            linear, offset = _rows(copy_, int(layer), ".".join(rest))
            rows = torch.tensor(indices) + offset
            linear.weight[rows] = 0.0
            if linear.bias is not None:
                linear.bias[rows] = 0.0
    return copy_


def _no_hooks(model: nn.Module) -> bool:
    return all(len(m._forward_hooks) == 0 for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_equals_weight_ablation_and_restores_exactly(arch):
    model = tiny_model(arch)
    ids = _inputs()
    before = _logits(model, ids)
    reference = _logits(_weight_ablated(model, CHOSEN), ids)
    assert (reference - before).abs().max() > 1e-3  # the ablation does change the output

    with inhibit(model, CHOSEN) as handle:
        assert handle.active
        during = _logits(model, ids)
        assert not _no_hooks(model)
    torch.testing.assert_close(during, reference, rtol=0, atol=1e-12)

    after = _logits(model, ids)
    assert torch.equal(after, before)  # bit-identical
    assert _no_hooks(model)
    assert not handle.active


def test_llama_attention_bias_is_zeroed_too():
    from transformers import AutoModelForCausalLM
    from tests.fixtures import tiny_config

    torch.manual_seed(1)
    cfg = tiny_config("llama")
    cfg.attention_bias = True
    model = AutoModelForCausalLM.from_config(cfg).to(torch.float64).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)  # biases included, so a bias that is left on would show
    chosen = {"layers.0.self_attn.q_proj": [4, 5], "layers.1.self_attn.k_proj": [0], "layers.0.self_attn.v_proj": [7]}
    ids = _inputs(seed=3)
    reference = _logits(_weight_ablated(model, chosen), ids)
    with inhibit(model, chosen):
        during = _logits(model, ids)
    torch.testing.assert_close(during, reference, rtol=0, atol=1e-12)


@pytest.mark.parametrize("arch", ARCHS)
def test_zeroing_a_gate_neuron_removes_it_from_the_mlp(arch):
    """SiLU / GELU-tanh have act(0) = 0: a zero gate equals dropping the neuron's down_proj column."""
    model = tiny_model(arch)
    layer, neurons = 1, [2, 17, 40]
    removed = copy.deepcopy(model)
    with torch.no_grad():
        removed.model.layers[layer].mlp.down_proj.weight[:, neurons] = 0.0
    ids = _inputs(seed=5)
    reference = _logits(removed, ids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # act(0) = 0 here: no warning expected
        with inhibit(model, {f"layers.{layer}.mlp.gate_proj": neurons}):
            during = _logits(model, ids)
    torch.testing.assert_close(during, reference, rtol=0, atol=1e-12)


def test_warns_when_activation_is_nonzero_at_zero():
    model = tiny_model("llama")
    model.model.layers[0].mlp.act_fn = nn.Sigmoid()  # sigmoid(0) = 0.5
    with pytest.warns(UserWarning, match=r"layers\.0\.mlp\.gate_proj.*act\(0\) = 0\.5"):
        with inhibit(model, {"layers.0.mlp.gate_proj": [1]}) as handle:
            assert handle.active  # the warning comes when the hooks are placed
    assert _no_hooks(model)


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_scale_mode_equals_scaled_weight_rows(arch):
    """Scaling a linear output column by f equals scaling its weight row (and bias) by f."""
    model = tiny_model(arch)
    factor = 2.5
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for name, indices in CHOSEN.items():
            _, layer, *rest = name.split(".")
            linear, offset = _rows(scaled, int(layer), ".".join(rest))
            rows = torch.tensor(indices) + offset
            linear.weight[rows] *= factor
    ids = _inputs(seed=2)
    before = _logits(model, ids)
    reference = _logits(scaled, ids)
    assert (reference - before).abs().max() > 1e-3
    with inhibit(model, CHOSEN, mode="scale", factor=factor):
        during = _logits(model, ids)
    torch.testing.assert_close(during, reference, rtol=1e-10, atol=1e-10)
    assert torch.equal(_logits(model, ids), before)


def test_handle_remove_and_restore_after_exception():
    model = tiny_model("qwen3")
    ids = _inputs()
    before = _logits(model, ids)
    handle = inhibit(model, CHOSEN)
    assert isinstance(handle, Inhibition) and handle.num_neurons == 11
    assert not torch.equal(_logits(model, ids), before)
    handle.remove()
    handle.remove()  # idempotent
    assert _no_hooks(model) and torch.equal(_logits(model, ids), before)

    with pytest.raises(RuntimeError, match="boom"):
        with inhibit(model, CHOSEN):
            raise RuntimeError("boom")
    assert _no_hooks(model) and torch.equal(_logits(model, ids), before)


def test_weights_are_never_touched():
    model = tiny_model("phi3")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with inhibit(model, CHOSEN):
        _logits(model, _inputs())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_duplicate_indices_and_tensor_input():
    model = tiny_model("llama")
    ids = _inputs()
    with inhibit(model, {"layers.0.mlp.gate_proj": torch.tensor([5, 1, 5, 1])}) as h:
        got = _logits(model, ids)
        assert h.indices["layers.0.mlp.gate_proj"].tolist() == [1, 5]
    reference = _logits(_weight_ablated(model, {"layers.0.mlp.gate_proj": [1, 5]}), ids)
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-12)


def test_neuron_set_input():
    model = tiny_model("gemma3")
    pairs = [(site, i) for site, indices in CHOSEN.items() for i in indices]
    neuron_set = NeuronSet.from_pairs(pairs)
    ids = _inputs()
    reference = _logits(_weight_ablated(model, CHOSEN), ids)
    with inhibit(model, neuron_set):
        got = _logits(model, ids)
    torch.testing.assert_close(got, reference, rtol=0, atol=1e-12)


def test_autograd_flows_through_the_hooks():
    """Gradients under the hook equal the weight-ablated model's, except the ablated rows, which get none."""
    model = tiny_model("llama")
    ablated = _weight_ablated(model, CHOSEN)
    ids = _inputs(seed=4)

    def grads(m):
        m.zero_grad()
        out = m(input_ids=ids, use_cache=False).logits
        out.logsumexp(-1).sum().backward()
        return {k: p.grad.clone() for k, p in m.named_parameters()}

    ref = grads(ablated)
    with inhibit(model, CHOSEN):
        got = grads(model)
    gate = "model.layers.0.mlp.gate_proj.weight"
    assert got[gate][[1, 5, 47]].abs().max() == 0  # nothing flows into a zeroed column
    assert ref[gate][[1, 5, 47]].abs().max() > 0  # ... whereas a zeroed weight still gets a gradient
    for key in ref:
        g, r = got[key], ref[key].clone()
        if key == gate:
            r[[1, 5, 47]] = 0.0
        elif key == "model.layers.1.mlp.gate_proj.weight":
            r[[0, 30]] = 0.0
        elif key == "model.layers.0.self_attn.k_proj.weight":
            r[[3]] = 0.0
        elif key == "model.layers.1.self_attn.q_proj.weight":
            r[[0, 9, 31]] = 0.0
        elif key == "model.layers.1.self_attn.v_proj.weight":
            r[[15, 2]] = 0.0
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11, msg=key)
    assert _no_hooks(model)


@pytest.mark.parametrize(
    "neurons, match",
    [
        ({"layers.9.mlp.gate_proj": [0]}, r"layers\.9\.mlp\.gate_proj"),
        ({"layers.0.mlp.up_proj": [0]}, r"layers\.0\.mlp\.up_proj"),
        ({"layers.0.mlp.gate_proj": [48]}, r"layers\.0\.mlp\.gate_proj.*48.*\[0, 48\)"),
        ({"layers.1.self_attn.k_proj": [-1]}, r"layers\.1\.self_attn\.k_proj.*-1"),
        ({"layers.1.self_attn.v_proj": [16]}, r"layers\.1\.self_attn\.v_proj.*16.*\[0, 16\)"),
        ({"layers.0.mlp.gate_proj": [0.5]}, r"layers\.0\.mlp\.gate_proj.*integers"),
    ],
)
def test_bad_neurons_are_refused_naming_the_site(neurons, match):
    model = tiny_model("phi3")
    with pytest.raises(ValueError, match=match):
        inhibit(model, neurons)
    assert _no_hooks(model)


def test_bad_mode_or_factor():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="mode"):
        inhibit(model, CHOSEN, mode="boost")
    with pytest.raises(ValueError, match="factor"):
        inhibit(model, CHOSEN, mode="scale")
    with pytest.raises(ValueError, match="factor"):
        inhibit(model, CHOSEN, mode="zero", factor=2.0)
    with pytest.raises(ValueError, match="finite"):
        inhibit(model, CHOSEN, mode="scale", factor=float("nan"))
    with pytest.raises(TypeError, match="NeuronSet"):
        inhibit(model, [("layers.0.mlp.gate_proj", 1)])
    assert _no_hooks(model)


def test_index_is_moved_to_each_output_device_and_cached():
    """Models spread over devices: the hook moves its columns to the output's device once per device."""
    from culnig_ext.intervention.inhibit import _ModuleHook

    hook = _ModuleHook(torch.tensor([0, 2]), "zero", None)
    linear = nn.Linear(3, 4)
    out = hook(linear, (), torch.ones(2, 4))
    assert out.tolist() == [[0.0, 1.0, 0.0, 1.0]] * 2
    meta = hook(linear, (), torch.ones(2, 4, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (2, 4)
    hook(linear, (), torch.ones(1, 4))
    assert sorted(d.type for d in hook._by_device) == ["cpu", "meta"]
    with pytest.raises(TypeError, match="expected a tensor"):
        hook(linear, (), (torch.ones(1, 4),))
