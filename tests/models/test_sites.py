"""culnig_ext.models.sites: where each architecture keeps its neurons, checked against widths/modules written out by hand."""
from __future__ import annotations

import pytest
import torch
import transformers
from torch import nn
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    MistralConfig,
    Qwen2Config,
    SiglipVisionConfig,
)

from culnig_ext.models.sites import Site, neuron_sites, parse_site_name, select_sites
from tests.fixtures import tiny_model

PROJS = ("q_proj", "k_proj", "v_proj")


def expected_unfused(layers, gate_width: int, q_width: int, kv_width: int) -> list[tuple[str, int, str, int, nn.Module, int]]:
    """(name, layer, kind, width, module, start) per site, in the documented order: per layer gate, q, k, v."""
    out = []
    for i, block in enumerate(layers):
        out.append((f"layers.{i}.mlp.gate_proj", i, "mlp", gate_width, block.mlp.gate_proj, 0))
        for proj, width in zip(PROJS, (q_width, kv_width, kv_width)):
            out.append((f"layers.{i}.self_attn.{proj}", i, "attn", width, getattr(block.self_attn, proj), 0))
    return out


def as_tuples(sites: list[Site]) -> list[tuple]:
    return [(s.name, s.layer, s.kind, s.width, s.module, s.start) for s in sites]


def assert_sites(sites: list[Site], expected: list[tuple]) -> None:
    got = as_tuples(sites)
    assert [g[:4] + (g[5],) for g in got] == [e[:4] + (e[5],) for e in expected]
    for g, e in zip(got, expected):
        assert g[4] is e[4], f"{g[0]}: wrong module"


# ---------------------------------------------------------------------------------------- architectures
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3"])
def test_unfused_architectures(arch):
    # tests.fixtures: hidden 32, intermediate 48, 4 heads, 2 kv heads, head_dim 8 -> q 32, k/v 16.
    model = tiny_model(arch, dtype=torch.float32)
    expected = expected_unfused(model.model.layers, gate_width=48, q_width=4 * 8, kv_width=2 * 8)
    assert len(expected) == 8
    assert_sites(neuron_sites(model), expected)


@pytest.mark.parametrize(
    "config",
    [
        # Mistral with head_dim != hidden/heads (q width 4*16 = 64 > hidden 32) and a single kv head.
        MistralConfig(vocab_size=50, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=1, head_dim=16, max_position_embeddings=64),
        Qwen2Config(vocab_size=50, hidden_size=24, intermediate_size=36, num_hidden_layers=2, num_attention_heads=6,
                    num_key_value_heads=2, max_position_embeddings=64),
    ],
    ids=["mistral", "qwen2"],
)
def test_mistral_and_qwen2(config):
    model = transformers.AutoModelForCausalLM.from_config(config)
    if config.model_type == "mistral":
        gate, q, kv = 40, 4 * 16, 1 * 16
    else:
        gate, q, kv = 36, 6 * 4, 2 * 4  # head_dim = 24 / 6
    expected = expected_unfused(model.model.layers, gate, q, kv)
    assert len(expected) == 4 * config.num_hidden_layers
    assert_sites(neuron_sites(model), expected)


def test_phi3_fused_offsets_by_hand():
    model = tiny_model("phi3", dtype=torch.float32)
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads  # 8
    q_w = cfg.num_attention_heads * head_dim  # 32
    kv_w = cfg.num_key_value_heads * head_dim  # 16
    assert (q_w, kv_w, cfg.intermediate_size) == (32, 16, 48)
    expected = []
    for i, block in enumerate(model.model.layers):
        qkv, gate_up = block.self_attn.qkv_proj, block.mlp.gate_up_proj
        assert (qkv.out_features, gate_up.out_features) == (64, 96)
        expected += [
            (f"layers.{i}.mlp.gate_proj", i, "mlp", 48, gate_up, 0),  # gate is the first half of gate_up
            (f"layers.{i}.self_attn.q_proj", i, "attn", 32, qkv, 0),
            (f"layers.{i}.self_attn.k_proj", i, "attn", 16, qkv, 32),
            (f"layers.{i}.self_attn.v_proj", i, "attn", 16, qkv, 48),
        ]
    assert_sites(neuron_sites(model), expected)


def test_phi3_view_is_a_view_of_the_right_columns():
    model = tiny_model("phi3", dtype=torch.float32)
    sites = {s.name: s for s in neuron_sites(model)}
    block = model.model.layers[1]
    x = torch.randn(2, 5, 32)
    qkv_out = block.self_attn.qkv_proj(x)
    gate_out = block.mlp.gate_up_proj(x)
    for name, out, start, width, weight in [
        ("layers.1.self_attn.q_proj", qkv_out, 0, 32, block.self_attn.qkv_proj.weight),
        ("layers.1.self_attn.k_proj", qkv_out, 32, 16, block.self_attn.qkv_proj.weight),
        ("layers.1.self_attn.v_proj", qkv_out, 48, 16, block.self_attn.qkv_proj.weight),
        ("layers.1.mlp.gate_proj", gate_out, 0, 48, block.mlp.gate_up_proj.weight),
    ]:
        view = sites[name].view(out)
        assert view.shape == (2, 5, width)
        # A view: same storage, first element at the site's column offset.
        assert view.data_ptr() == out.data_ptr() + start * out.element_size()
        assert view.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
        # The columns are the projection by the weight rows [start, start + width).
        torch.testing.assert_close(view, x @ weight[start:start + width].T)
    # Writing through the view changes the fused output (no copy was taken).
    view = sites["layers.1.self_attn.k_proj"].view(qkv_out.detach())
    view[0, 0, 0] = 123.0
    assert qkv_out[0, 0, 32].item() == 123.0


def test_unfused_view_returns_the_output_itself():
    model = tiny_model("llama", dtype=torch.float32)
    site = neuron_sites(model)[1]  # layers.0.self_attn.q_proj
    out = torch.randn(3, 32)
    assert site.view(out) is out


def test_gemma3_multimodal_uses_the_text_stack():
    text = Gemma3TextConfig(
        vocab_size=300, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=64, sliding_window=4, query_pre_attn_scalar=8,
    )
    # The vision encoder's blocks also have .self_attn and .mlp (fc1/fc2): the text stack must be chosen.
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=299,
                          boi_token_index=297, eoi_token_index=298)
    model = Gemma3ForConditionalGeneration(config)
    assert model.config.model_type == "gemma3"
    layers = model.model.language_model.layers
    assert_sites(neuron_sites(model), expected_unfused(layers, gate_width=40, q_width=4 * 8, kv_width=1 * 8))


def test_kinds_filter_and_unknown_kind():
    model = tiny_model("llama", dtype=torch.float32)
    mlp = neuron_sites(model, kinds=("mlp",))
    assert [s.name for s in mlp] == ["layers.0.mlp.gate_proj", "layers.1.mlp.gate_proj"]
    attn = neuron_sites(model, kinds=("attn",))
    assert [s.name for s in attn] == [f"layers.{i}.self_attn.{p}" for i in range(2) for p in PROJS]
    with pytest.raises(ValueError, match="unknown site kind.*'ffn'"):
        neuron_sites(model, kinds=("mlp", "ffn"))


# ------------------------------------------------------------------------------------------ generic rule
class Attn(nn.Module):
    def __init__(self, d: int, q: int, kv: int) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, q), nn.Linear(d, kv), nn.Linear(d, kv)


class GatedMLP(nn.Module):
    def __init__(self, d: int, f: int) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(d, f), nn.Linear(d, f), nn.Linear(f, d)


class PlainMLP(nn.Module):  # CLIP/Siglip style: no gate
    def __init__(self, d: int, f: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, f), nn.Linear(f, d)


class Block(nn.Module):
    def __init__(self, attn: nn.Module, mlp: nn.Module) -> None:
        super().__init__()
        self.self_attn, self.mlp = attn, mlp


class Holder(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class Custom(nn.Module):
    """A decoder kept at an unusual path, ``backbone.blocks``, optionally behind a vision encoder."""

    def __init__(self, with_vision: bool = False) -> None:
        super().__init__()
        if with_vision:  # registered first, so it comes first in named_modules()
            self.vision = Holder([Block(Attn(8, 8, 8), PlainMLP(8, 16)) for _ in range(2)])
        self.backbone = Holder([Block(Attn(12, 12, 6), GatedMLP(12, 20 + i)) for i in range(3)])


@pytest.mark.parametrize("with_vision", [False, True])
def test_generic_rule_finds_an_unusual_path(with_vision):
    model = Custom(with_vision)
    expected = []
    for i, block in enumerate(model.backbone.blocks):
        expected.append((f"layers.{i}.mlp.gate_proj", i, "mlp", 20 + i, block.mlp.gate_proj, 0))
        for proj, width in zip(PROJS, (12, 6, 6)):
            expected.append((f"layers.{i}.self_attn.{proj}", i, "attn", width, getattr(block.self_attn, proj), 0))
    assert_sites(neuron_sites(model), expected)


def test_generic_rule_with_an_unknown_model_type():
    model = Custom(with_vision=True)
    model.config = transformers.PretrainedConfig()  # model_type "" is in no table
    assert [s.module for s in neuron_sites(model)][0] is model.backbone.blocks[0].mlp.gate_proj


# -------------------------------------------------------------------------------------------- refusals
def test_refuses_a_model_without_decoder_layers():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError) as info:
        neuron_sites(model)
    message = str(info.value)
    assert "Sequential" in message
    assert "model.layers" in message and ".self_attn and .mlp" in message


class OddMLP(nn.Module):  # neither a gate nor a known gate-less input projection
    def __init__(self, d: int, f: int) -> None:
        super().__init__()
        self.w_in, self.w_out = nn.Linear(d, f), nn.Linear(f, d)


def test_refuses_a_layer_whose_mlp_has_no_gate():
    model = Holder([Block(Attn(8, 8, 8), GatedMLP(8, 16)), Block(Attn(8, 8, 8), OddMLP(8, 16))])
    with pytest.raises(ValueError) as info:
        neuron_sites(model)
    message = str(info.value)
    assert message.startswith("layer 1:")
    assert "mlp.gate_proj" in message and "mlp.gate_up_proj" in message and "OddMLP" in message
    assert "fc1" in message and "experts" in message
    # Only the attention sites are still listed when the MLP is not asked for.
    assert len(neuron_sites(model, kinds=("attn",))) == 6


def test_a_gateless_mlp_uses_its_input_projection():
    model = Holder([Block(Attn(8, 8, 8), GatedMLP(8, 16)), Block(Attn(8, 8, 8), PlainMLP(8, 16))])
    gate = [s for s in neuron_sites(model) if s.kind == "mlp"]
    assert [s.module for s in gate] == [model.blocks[0].mlp.gate_proj, model.blocks[1].mlp.fc1]
    assert [s.name for s in gate] == ["layers.0.mlp.gate_proj", "layers.1.mlp.gate_proj"]


def test_refuses_attention_without_projections():
    class NoProj(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.in_proj = nn.Linear(8, 24)

    model = Holder([Block(NoProj(), GatedMLP(8, 16))])
    with pytest.raises(ValueError, match=r"layer 0: looked for self_attn.q_proj/k_proj/v_proj or self_attn.qkv_proj.*NoProj"):
        neuron_sites(model)


def test_refuses_a_fused_qkv_that_does_not_split():
    model = tiny_model("phi3", dtype=torch.float32)
    # 4 heads * 8 + 2 * 2 * 8 = 64; a 60-wide projection cannot be split into q, k, v.
    model.model.layers[1].self_attn.qkv_proj = nn.Linear(32, 60, bias=False)
    with pytest.raises(ValueError, match=r"layer 1: cannot split the fused qkv_proj of width 60"):
        neuron_sites(model)


# ---------------------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "name, expected",
    [
        ("layers.0.mlp.gate_proj", (0, "mlp")),
        ("layers.17.mlp.gate_proj", (17, "mlp")),
        ("layers.3.self_attn.q_proj", (3, "attn")),
        ("layers.3.self_attn.k_proj", (3, "attn")),
        ("layers.120.self_attn.v_proj", (120, "attn")),
    ],
)
def test_parse_site_name(name, expected):
    assert parse_site_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "layers.x.mlp.gate_proj", "model.layers.0.mlp.gate_proj", "layers.0.mlp.up_proj", "layers.0.self_attn.o_proj",
        "layers.-1.mlp.gate_proj", "layers.0.self_attn.qkv_proj", "layers.0.mlp.gate_proj ", "",
    ],
)
def test_parse_site_name_refuses(name):
    with pytest.raises(ValueError) as info:
        parse_site_name(name)
    assert repr(name) in str(info.value)


def test_select_sites_model_order_and_unknown_names():
    model = tiny_model("llama", dtype=torch.float32)
    every = neuron_sites(model)
    assert [s.name for s in select_sites(model)] == [s.name for s in every]
    picked = select_sites(model, ["layers.1.self_attn.v_proj", "layers.0.mlp.gate_proj"])
    assert [s.name for s in picked] == ["layers.0.mlp.gate_proj", "layers.1.self_attn.v_proj"]  # model order
    assert picked[1].module is model.model.layers[1].self_attn.v_proj
    with pytest.raises(ValueError) as info:
        select_sites(model, ["layers.0.mlp.gate_proj", "layers.2.mlp.gate_proj", "layers.0.self_attn.o_proj"])
    message = str(info.value)
    assert "'layers.2.mlp.gate_proj'" in message and "'layers.0.self_attn.o_proj'" in message
    assert "'layers.0.mlp.gate_proj'" not in message.split(";")[0]
