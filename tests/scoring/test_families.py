"""Every supported family beyond Llama/Qwen/Gemma 3/Phi-3 against a float64, item-by-item autograd reference.

The reference below maps each site to its module and output columns by hand from the architecture (independent of
culnig_ext.models.sites), and for mixtures of experts runs its own per-expert loop, checked against the model's own
forward, keeping every expert's gate output on the tokens routed to it.
"""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import culnig_ext
from culnig_ext.intervention.inhibit import inhibit
from culnig_ext.models.sites import neuron_sites
from tests.fixtures import FAMILIES, MOE, family_model
from tests.fixtures import random_items
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)


def _cols(lo, hi):
    return torch.arange(lo, hi)


def reference_sites(model, arch):
    """{site name: (module, output columns)} for dense sites; {site name: (experts module, expert e)} for MoE."""
    cfg = model.config
    dense, experts = {}, {}
    if arch == "gpt2":
        blocks, h = model.transformer.h, cfg.n_embd
        for i, b in enumerate(blocks):
            dense[f"layers.{i}.mlp.gate_proj"] = (b.mlp.c_fc, _cols(0, b.mlp.c_fc.nf))
            for j, p in enumerate("qkv"):
                dense[f"layers.{i}.self_attn.{p}_proj"] = (b.attn.c_attn, _cols(j * h, (j + 1) * h))
        return dense, experts
    if arch in ("gpt_neox", "falcon", "falcon_mq", "falcon_classic"):
        neox = arch == "gpt_neox"
        blocks = model.gpt_neox.layers if neox else model.transformer.h
        nh = cfg.num_attention_heads
        hd = cfg.hidden_size // nh
        for i, b in enumerate(blocks):
            attn = b.attention if neox else b.self_attention
            fused = attn.query_key_value
            dense[f"layers.{i}.mlp.gate_proj"] = (b.mlp.dense_h_to_4h, _cols(0, b.mlp.dense_h_to_4h.out_features))
            if arch == "falcon_mq":
                q, k, v = _cols(0, nh * hd), _cols(nh * hd, nh * hd + hd), _cols(nh * hd + hd, nh * hd + 2 * hd)
            elif arch == "falcon":
                kv = cfg.num_kv_heads
                per = nh // kv + 2
                q = torch.tensor([g * per * hd + s * hd + d for g in range(kv) for s in range(nh // kv) for d in range(hd)])
                k = torch.tensor([g * per * hd + (per - 2) * hd + d for g in range(kv) for d in range(hd)])
                v = torch.tensor([g * per * hd + (per - 1) * hd + d for g in range(kv) for d in range(hd)])
            else:  # per head [q_h | k_h | v_h]
                q, k, v = (torch.tensor([hh * 3 * hd + j * hd + d for hh in range(nh) for d in range(hd)]) for j in range(3))
            for p, c in zip("qkv", (q, k, v)):
                dense[f"layers.{i}.self_attn.{p}_proj"] = (fused, c)
        return dense, experts
    blocks = model.model.decoder.layers if arch == "opt" else model.model.layers
    for i, b in enumerate(blocks):
        if arch == "opt":
            dense[f"layers.{i}.mlp.gate_proj"] = (b.fc1, _cols(0, b.fc1.out_features))
        elif arch == "phi":
            dense[f"layers.{i}.mlp.gate_proj"] = (b.mlp.fc1, _cols(0, b.mlp.fc1.out_features))
        elif hasattr(b.mlp, "experts"):
            for e in range(b.mlp.experts.gate_up_proj.shape[0]):
                experts[f"layers.{i}.mlp.experts.{e}.gate_proj"] = (b.mlp.experts, e)
            if hasattr(b.mlp, "shared_expert"):
                g = b.mlp.shared_expert.gate_proj
                dense[f"layers.{i}.mlp.shared_expert.gate_proj"] = (g, _cols(0, g.out_features))
        else:
            dense[f"layers.{i}.mlp.gate_proj"] = (b.mlp.gate_proj, _cols(0, b.mlp.gate_proj.out_features))
        for p in "qkv":
            m = getattr(b.self_attn, f"{p}_proj")
            dense[f"layers.{i}.self_attn.{p}_proj"] = (m, _cols(0, m.out_features))
    return dense, experts


def _moe_reference_forward(experts_module, captured):
    """Mixtral-style expert loop written out: gate_up = x W_e^T, act(gate) * up, down, times router weight."""
    def forward(hidden, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden)
        inter = experts_module.gate_up_proj.shape[1] // 2
        for e in range(experts_module.gate_up_proj.shape[0]):
            tok, pos = (top_k_index == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            gate_up = hidden[tok] @ experts_module.gate_up_proj[e].T
            if gate_up.requires_grad:
                gate_up.retain_grad()
            captured[(id(experts_module), e)] = (gate_up, tok)
            h = experts_module.act_fn(gate_up[:, :inter]) * gate_up[:, inter:]
            out = out.index_add(0, tok, (h @ experts_module.down_proj[e].T) * top_k_weights[tok, pos, None])
        return out
    return forward


def reference_scores(model, arch, items):
    dense, experts = reference_sites(model, arch)
    groups = list(dict.fromkeys(it["group"] for it in items))
    widths = {n: len(c) for n, (_, c) in dense.items()}
    widths.update({n: m.gate_up_proj.shape[1] // 2 for n, (m, _) in experts.items()})
    sums = {n: torch.zeros(len(groups), w, dtype=torch.float64) for n, w in widths.items()}
    probs = torch.zeros(len(groups), dtype=torch.float64)
    modules = {id(m): m for m, _ in dense.values()}
    expert_modules = {id(m): m for m, _ in experts.values()}
    for item in items:
        fed = torch.tensor([item["input_ids"]])
        captured, handles = {}, []

        def hook(mod, args, output):
            output.retain_grad()
            captured[id(mod)] = output

        for m in modules.values():
            handles.append(m.register_forward_hook(hook))
        for m in expert_modules.values():
            m.forward = _moe_reference_forward(m, captured)
        try:
            embeds = model.get_input_embeddings()(fed).detach().requires_grad_(True)
            logits = model(inputs_embeds=embeds, use_cache=False).logits[0]
        finally:
            for h in handles:
                h.remove()
            for m in expert_modules.values():
                del m.forward
        with torch.no_grad():  # the hand-written expert loop computes what the model computes
            torch.testing.assert_close(logits, model(input_ids=fed, use_cache=False).logits[0], rtol=1e-9, atol=1e-9)
        p = torch.softmax(logits.double(), -1)[-1, item["answer_id"]]
        p.backward()
        row = groups.index(item["group"])
        probs[row] += p.item()
        for n, (m, cols) in dense.items():
            out = captured[id(m)]
            out, grad = out.detach().reshape(1, fed.shape[1], -1), out.grad.reshape(1, fed.shape[1], -1)  # OPT: [T, F]
            sums[n][row] += p.item() * (out[0][:, cols] * grad[0][:, cols]).max(0).values
        for n, (m, e) in experts.items():
            if (id(m), e) not in captured:
                continue  # no token of this item reached expert e: it adds nothing
            gate_up, _ = captured[(id(m), e)]
            inter = m.gate_up_proj.shape[1] // 2
            sums[n][row] += p.item() * (gate_up.detach()[:, :inter] * gate_up.grad[:, :inter]).max(0).values
    return groups, sums, probs


@pytest.mark.parametrize("arch", FAMILIES)
def test_family_scores_match_float64_reference(arch):
    model = family_model(arch)
    # Gemma 2 runs eager attention, whose float64 mask (finfo.min) becomes -inf in its float32 softmax: a fully
    # masked padding row is NaN there, and 0 * NaN leaks into real rows. Equal lengths: batched, but no padding.
    items = random_items(5, seed=3, min_len=6, max_len=6) if arch == "gemma2" else random_items(5, seed=3)
    groups, ref, _ = reference_scores(model, arch, items)
    table = culnig_ext.score(model, items, batch_size=3, progress=False)
    assert table.groups == groups
    assert set(table.sites) == set(ref), sorted(set(table.sites) ^ set(ref))
    for name, want in ref.items():
        torch.testing.assert_close(table[name], want, rtol=1e-7, atol=1e-12, msg=name)
    assert any(float(want.abs().max()) > 1e-6 for want in ref.values())
    if arch in MOE:  # routing leaves some expert idle on some items, and every expert reached on some
        per_expert = [n for n in ref if ".experts." in n]
        assert all(float(ref[n].abs().sum()) > 0 for n in per_expert)


@pytest.mark.parametrize("arch", ("mixtral", "gpt_neox", "falcon"))
def test_inhibit_expert_and_interleaved_columns(arch):
    """Zeroing neurons equals zeroing the matching weight rows by hand (expert gate rows; interleaved qkv rows)."""
    model = family_model(arch)
    ids = torch.tensor([[5, 9, 11, 40, 7]])
    if arch == "mixtral":
        site, idx = "layers.0.mlp.experts.1.gate_proj", [0, 3, 7]
    else:
        site, idx = "layers.1.self_attn.k_proj", [1, 9]
    with torch.no_grad(), inhibit(model, {site: idx}):
        got = model(input_ids=ids).logits
    with torch.no_grad():
        if arch == "mixtral":
            model.model.layers[0].mlp.experts.gate_up_proj[1, idx] = 0.0
        else:
            hd = 8
            block = model.gpt_neox.layers[1].attention if arch == "gpt_neox" else model.transformer.h[1].self_attention
            if arch == "gpt_neox":  # head h's k channels at h * 24 + 8 + d
                rows = [(i // hd) * 3 * hd + hd + i % hd for i in idx]
            else:  # 2 kv groups of [q, q, k, v]: group g's k channels at g * 32 + 16 + d
                rows = [(i // hd) * 4 * hd + 2 * hd + i % hd for i in idx]
            block.query_key_value.weight[rows] = 0.0
            if block.query_key_value.bias is not None:
                block.query_key_value.bias[rows] = 0.0
        want = model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert not hasattr(model.model.layers[0].mlp.experts if arch == "mixtral" else model, "_culnig_expert_taps")


def test_unsupported_model_is_refused_naming_what_was_looked_for():
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList([torch.nn.Module()])
    with pytest.raises(ValueError, match="cannot find the decoder layers.*not supported"):
        neuron_sites(model)


def test_item_scores_of_expert_neurons_are_per_item_and_zero_where_not_routed():
    """Per-item (unweighted) scores of expert neurons in a batch: each item's own max over its routed tokens."""
    model = family_model("qwen2_moe")
    items = random_items(5, seed=8)
    neurons = [("layers.0.mlp.experts.0.gate_proj", 3), ("layers.0.mlp.experts.2.gate_proj", 0),
               ("layers.0.mlp.shared_expert.gate_proj", 5), ("layers.1.mlp.gate_proj", 1)]
    got = culnig_ext.item_scores(model, items, neurons, batch_size=3, progress=False)
    zeros = 0
    for row, item in enumerate(items):
        _, ref, probs = reference_scores(model, "qwen2_moe", [item])
        want = torch.tensor([ref[s][0, i].item() / probs[0].item() for s, i in neurons], dtype=torch.float64)
        zeros += int((want == 0).sum())
        torch.testing.assert_close(got[row].double(), want, rtol=1e-5, atol=1e-9)
    assert zeros > 0  # some item sends no token to one of the experts: its score there is 0


def test_scaling_experts_of_two_moe_layers_equals_scaled_weight_rows():
    """mode="scale" on experts of both MoE layers (two experts in one layer): the same logits as multiplying those
    experts' gate rows by the factor by hand, layer by layer; the hooks are gone afterwards."""
    model = family_model("mixtral")
    ids = torch.tensor([[5, 9, 11, 40, 7, 3]])
    neurons = {"layers.0.mlp.experts.1.gate_proj": [0, 3, 7], "layers.0.mlp.experts.2.gate_proj": [5],
               "layers.1.mlp.experts.0.gate_proj": [2, 4]}
    with torch.no_grad():
        before = model(input_ids=ids).logits
        with inhibit(model, neurons, mode="scale", factor=0.25):
            got = model(input_ids=ids).logits
        assert torch.equal(model(input_ids=ids).logits, before)  # restored on exit
        for layer, expert, rows in ((0, 1, [0, 3, 7]), (0, 2, [5]), (1, 0, [2, 4])):
            model.model.layers[layer].mlp.experts.gate_up_proj[expert, rows] *= 0.25
        want = model(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert (got - before).abs().max() > 1e-6  # the scaling changed something
