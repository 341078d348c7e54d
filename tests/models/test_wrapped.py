"""Wrapped projections: PEFT LoRA layers score as the merged model; quantised layers score when their backward works
and are refused, by module name, when it does not."""
from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.nn import functional as F

import culnig_ext
from culnig_ext.models.wrapped import NotDifferentiableError
from tests.fixtures import random_items, tiny_model
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)

TARGETS = {
    "llama": ["gate_proj", "up_proj", "down_proj", "q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["gate_up_proj", "qkv_proj", "down_proj", "o_proj"],  # fused projections wrapped too
}


@pytest.mark.parametrize("arch", sorted(TARGETS))
def test_lora_model_scores_as_the_merged_model(arch):
    base = tiny_model(arch)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[arch], init_lora_weights=False, lora_dropout=0.0)
    peft_model = get_peft_model(copy.deepcopy(base), config).double().eval()
    merged = copy.deepcopy(peft_model).merge_and_unload()
    assert type(merged.model.layers[0].self_attn.o_proj) is nn.Linear
    # The adapters change the model: the merged weights differ from the base's.
    assert not torch.allclose(merged.model.layers[0].self_attn.o_proj.weight, base.model.layers[0].self_attn.o_proj.weight)
    items = random_items(6, seed=4, multi_token=True)
    got = culnig_ext.score(peft_model, items, batch_size=3, progress=False)
    want = culnig_ext.score(merged, items, batch_size=3, progress=False)
    assert list(got.sites) == list(want.sites) and len(got.sites) == 8
    for site in want.sites:
        torch.testing.assert_close(got[site], want[site], rtol=1e-9, atol=1e-13, msg=site)
    torch.testing.assert_close(got.prob_sums, want.prob_sums, rtol=1e-10, atol=0)
    # and the adapters matter to the scores: the base model's table is another one
    base_table = culnig_ext.score(base, items, batch_size=3, progress=False)
    assert not torch.allclose(base_table["layers.0.mlp.gate_proj"], want["layers.0.mlp.gate_proj"])
    # the LoRA wrappers are left as they were (no hooks, trainable flags kept)
    assert all(not m._forward_hooks for m in peft_model.modules())


class FakeQuantLinear(nn.Module):
    """int8 weights with a per-row scale, de-quantised on the fly: its backward works (plain autograd ops)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        scale = w.abs().amax(1, keepdim=True) / 127
        self.register_buffer("qweight", torch.round(w / scale).to(torch.int8))
        self.scale = nn.Parameter(scale)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def dequantised(self) -> torch.Tensor:
        return self.qweight.to(self.scale.dtype) * self.scale

    def forward(self, x):
        return F.linear(x, self.dequantised().to(x.dtype))


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        return x @ w.T

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("int4 kernel has no backward")


class KernelQuantLinear(FakeQuantLinear):
    """A quantised layer whose kernel has no backward."""

    def forward(self, x):
        return _NoBackward.apply(x, self.dequantised().to(x.dtype))


class DetachedQuantLinear(FakeQuantLinear):
    """A quantised layer computed outside autograd."""

    def forward(self, x):
        with torch.no_grad():
            return F.linear(x, self.dequantised().to(x.dtype))


def test_quantised_layer_with_a_backward_scores_as_its_dequantised_linear():
    model = tiny_model("llama")
    reference = copy.deepcopy(model)
    for i in range(2):
        quant = FakeQuantLinear(model.model.layers[i].mlp.gate_proj)
        model.model.layers[i].mlp.gate_proj = quant
        reference.model.layers[i].mlp.gate_proj.weight.data.copy_(quant.dequantised())
    items = random_items(5, seed=6)
    got = culnig_ext.score(model, items, batch_size=2, progress=False)
    want = culnig_ext.score(reference, items, batch_size=2, progress=False)
    for site in want.sites:
        torch.testing.assert_close(got[site], want[site], rtol=1e-9, atol=1e-13, msg=site)


@pytest.mark.parametrize(
    "wrapper, message",
    [(KernelQuantLinear, "the backward of module model.layers.1.self_attn.k_proj (KernelQuantLinear) fails: "
                         "RuntimeError: int4 kernel has no backward"),
     (DetachedQuantLinear, "module model.layers.1.self_attn.k_proj (DetachedQuantLinear) returns an output with no "
                           "gradient path")],
)
def test_quantised_layer_without_a_backward_is_refused_by_name(wrapper, message):
    model = tiny_model("llama")
    model.model.layers[1].self_attn.k_proj = wrapper(model.model.layers[1].self_attn.k_proj)
    with pytest.raises(NotDifferentiableError) as info:
        culnig_ext.score(model, random_items(3), progress=False)
    assert str(info.value).startswith("site layers.1.self_attn.k_proj: ") and message in str(info.value)
    # Leaving its sites out does not help: the backward of every earlier neuron runs through it.
    with pytest.raises(NotDifferentiableError) as info:
        culnig_ext.score(model, random_items(3), sites=["layers.0.mlp.gate_proj"], progress=False)
    assert str(info.value).startswith(message.split(" model.")[0]) and "site " not in str(info.value)
    assert all(not m._forward_hooks for m in model.modules())


def test_item_scores_refuses_a_quantised_site_by_name():
    # item_scores probes the model like score: the refused module is named with the site it holds.
    model = tiny_model("llama")
    model.model.layers[1].self_attn.k_proj = KernelQuantLinear(model.model.layers[1].self_attn.k_proj)
    with pytest.raises(NotDifferentiableError) as info:
        culnig_ext.item_scores(model, random_items(2), [("layers.1.self_attn.k_proj", 0)], progress=False)
    assert str(info.value).startswith("site layers.1.self_attn.k_proj: the backward of module "
                                      "model.layers.1.self_attn.k_proj (KernelQuantLinear) fails")


def test_a_site_without_a_gradient_path_is_refused_at_run_time(monkeypatch):
    # Behind the probe, the site hook itself refuses an output with no gradient path (rather than attributing
    # nothing), naming the site and the module's path and type.
    import culnig_ext.scoring.scorer as scorer

    monkeypatch.setattr(scorer, "check_differentiable", lambda *args, **kwargs: None)  # the probe off
    model = tiny_model("llama")
    model.model.layers[1].self_attn.k_proj = DetachedQuantLinear(model.model.layers[1].self_attn.k_proj)
    with pytest.raises(RuntimeError) as info:
        culnig_ext.score(model, random_items(2), progress=False)
    assert str(info.value).startswith("site layers.1.self_attn.k_proj: module model.layers.1.self_attn.k_proj "
                                      "(DetachedQuantLinear) returned an output with no gradient path; ")
