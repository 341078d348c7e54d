"""Where a model keeps its neurons: the MLP gate and attention q/k/v output channels of every decoder layer.

A *site* is one projection's output, seen as ``[..., width]`` neurons. Site names are logical and the same in every
family, so tables, neuron sets and reports never depend on how a model spells its modules:

==========================================  ===========================================================================
site name                                   module (by family)
==========================================  ===========================================================================
``layers.{i}.mlp.gate_proj``                gated MLPs (Llama, Mistral, Qwen2/3, Gemma 1-3, OLMo 2, Granite, SmolLM2):
                                            ``mlp.gate_proj``; Phi-3/4: the first half of ``mlp.gate_up_proj``.
                                            Gate-less MLPs: the MLP's *input* projection, the analogue of the gate (the
                                            pre-activation whose non-linearity decides what the neuron passes on):
                                            GPT-2 ``mlp.c_fc`` (Conv1D), GPT-NeoX/Pythia and Falcon
                                            ``mlp.dense_h_to_4h``, OPT ``fc1`` (on the block), Phi-1/2 ``mlp.fc1``.
``layers.{i}.mlp.experts.{e}.gate_proj``    mixture-of-experts (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE): expert ``e``'s
                                            gate, a slice of the 3-D ``experts.gate_up_proj`` parameter; attributed
                                            only on the tokens the router sends to expert ``e`` (``culnig_ext.models.moe``).
``layers.{i}.mlp.shared_expert.gate_proj``  Qwen2-MoE's always-on shared expert.
``layers.{i}.self_attn.{q,k,v}_proj``       separate projections (Llama ... OPT, Phi-2, MoE families); fused ones are
                                            split by columns: Phi-3 ``qkv_proj`` and GPT-2 ``attn.c_attn`` ([q|k|v]),
                                            GPT-NeoX ``attention.query_key_value`` (per head [q_h|k_h|v_h]), Falcon
                                            ``self_attention.query_key_value`` (all three of its layouts).
==========================================  ===========================================================================

A fused site is a column slice ``[start, start + width)`` of the module's output (no copy), or for interleaved
layouts an explicit column list (``Site.columns``). Projections are recognised by what they produce, not their
class: ``nn.Linear`` and its subclasses (bitsandbytes, Falcon), transformers' ``Conv1D``, and wrappers that expose
``out_features`` (PEFT LoRA layers, which are scored as the merged layer they compute).

Not supported (refused by ``neuron_sites`` with an error that says what was looked for): encoder-decoder and
encoder-only models, MoE experts kept as a ``ModuleList`` of separate MLPs or with a post-expert norm or without a
gate, gate-less experts, multimodal towers other than Gemma 3's text stack, state-space / recurrent blocks (Mamba,
RWKV, Jamba's Mamba layers), and attention whose q/k/v are not linear output channels (MLA low-rank projections).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

MLP = "mlp"
ATTN = "attn"
KINDS = (MLP, ATTN)

# model_type -> dotted path of the decoder layers inside the *CausalLM / *ForConditionalGeneration module.
# Several paths per family because transformers moved the multimodal text stack between releases.
_LAYER_PATHS: dict[str, tuple[str, ...]] = {
    "llama": ("model.layers",),  # Llama 3.x, Falcon3, SmolLM2
    "mistral": ("model.layers",),
    "qwen2": ("model.layers",),
    "qwen3": ("model.layers",),
    "gemma": ("model.layers",),
    "gemma2": ("model.layers",),
    "gemma3_text": ("model.layers",),
    "gemma3": ("model.language_model.layers", "language_model.model.layers", "model.language_model.model.layers"),
    "phi3": ("model.layers",),  # Phi-3, Phi-4 (fused projections)
    "olmo2": ("model.layers",),
    "granite": ("model.layers",),
    "gpt2": ("transformer.h",),
    "gpt_neox": ("gpt_neox.layers",),
    "opt": ("model.decoder.layers",),
    "falcon": ("transformer.h",),
    "phi": ("model.layers",),
    "mixtral": ("model.layers",),
    "qwen2_moe": ("model.layers",),
    "qwen3_moe": ("model.layers",),
    "olmoe": ("model.layers",),
}

# Where each block keeps its attention and its MLP, in the order tried.
_ATTN_ATTRS = ("self_attn", "attn", "attention", "self_attention")
_MLP_ATTRS = ("mlp", "feed_forward", "block_sparse_moe")
# The input projection of a gate-less MLP, in the order tried (on the MLP, or on the block itself for OPT).
_UNGATED_INPUTS = ("c_fc", "fc1", "dense_h_to_4h")

_SITE_NAME = re.compile(
    r"^layers\.(\d+)\.(mlp(?:\.experts\.\d+|\.shared_expert)?\.gate_proj|self_attn\.[qkv]_proj)$"
)


@dataclass(frozen=True, eq=False)
class Site:
    """One neuron site.

    Attributes:
        name: logical name, e.g. ``layers.3.self_attn.k_proj`` (the same for fused and unfused models).
        layer: decoder layer index.
        kind: ``"mlp"`` (gate neurons) or ``"attn"`` (q/k/v neurons).
        width: number of neurons N.
        module: the projection whose output holds the neurons (for an MoE expert: the experts module).
        start: first column of the site inside the module's output (non-zero only for fused projections).
        columns: for interleaved fused layouts (GPT-NeoX, Falcon), the output column of each neuron, ``[width]``
            int64; None when the site is the contiguous slice ``[start, start + width)``.
        expert: the expert index for an MoE expert site (whose output is the expert's ``[routed tokens,
            2 * width]`` gate/up projection), else None.
    """

    name: str
    layer: int
    kind: str
    width: int
    module: nn.Module
    start: int = 0
    columns: torch.Tensor | None = None
    expert: int | None = None

    def view(self, output: torch.Tensor) -> torch.Tensor:
        """The site's neurons inside ``module``'s output ``[..., out_features]`` -> ``[..., width]`` (a view, or a
        gathered copy for an interleaved layout)."""
        if self.columns is not None:
            return output.index_select(-1, self.columns.to(output.device))
        if self.start == 0 and output.shape[-1] == self.width:
            return output
        return output.narrow(-1, self.start, self.width)

    def output_columns(self, index: torch.Tensor) -> torch.Tensor:
        """Neuron indices ``[K]`` int64 -> the module's output columns that hold them ``[K]`` int64."""
        if self.columns is not None:
            return self.columns[index]
        return index + self.start

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device


def parse_site_name(name: str) -> tuple[int, str]:
    """``layers.{i}.mlp.gate_proj`` (also ``mlp.experts.{e}.gate_proj``, ``mlp.shared_expert.gate_proj``) ->
    ``(i, "mlp")``; ``layers.{i}.self_attn.q_proj`` -> ``(i, "attn")``."""
    match = _SITE_NAME.match(name)
    if match is None:
        raise ValueError(
            f"not a site name: {name!r} (expected 'layers.<i>.mlp.gate_proj', 'layers.<i>.mlp.experts.<e>.gate_proj', "
            "'layers.<i>.mlp.shared_expert.gate_proj' or 'layers.<i>.self_attn.<q|k|v>_proj')"
        )
    return int(match.group(1)), MLP if match.group(2).startswith("mlp") else ATTN


def text_config(model: nn.Module):
    """The language model's config (``get_text_config()`` of a multimodal model), or None without one."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    get_text = getattr(config, "get_text_config", None)
    return get_text() if callable(get_text) else getattr(config, "text_config", config)


def _get_path(root: nn.Module, path: str) -> nn.Module | None:
    module = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def out_width(module: nn.Module | None) -> int | None:
    """The output width of a projection module, or None when ``module`` is not one: ``nn.Linear`` (and subclasses:
    bitsandbytes, FalconLinear), transformers' ``Conv1D`` (``nf``), or a wrapper exposing ``out_features`` (PEFT)."""
    if module is None or not isinstance(module, nn.Module):
        return None
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    if type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nf", None), int):
        return int(module.nf)
    width = getattr(module, "out_features", None)
    return int(width) if isinstance(width, int) and not isinstance(width, bool) else None


def _first_attr(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    for name in names:
        found = getattr(module, name, None)
        if isinstance(found, nn.Module):
            return found
    return None


def _block_attn(block: nn.Module) -> nn.Module | None:
    return _first_attr(block, _ATTN_ATTRS)


def _block_mlp(block: nn.Module) -> nn.Module | None:
    mlp = _first_attr(block, _MLP_ATTRS)
    if mlp is None and any(out_width(getattr(block, name, None)) for name in _UNGATED_INPUTS):
        return block  # OPT keeps fc1/fc2 on the block itself
    return mlp


def _looks_like_layers(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.ModuleList)
        and len(module) > 0
        and all(_block_attn(block) is not None and _block_mlp(block) is not None for block in module)
    )


def _has_gate(mlp: nn.Module) -> bool:
    return (
        out_width(getattr(mlp, "gate_proj", None)) is not None
        or out_width(getattr(mlp, "gate_up_proj", None)) is not None
        or isinstance(getattr(mlp, "experts", None), nn.Module)
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a Hugging Face causal LM, from the architecture table or the generic rule."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    tried = list(_LAYER_PATHS.get(model_type, ())) + ["model.layers", "layers"]
    for path in dict.fromkeys(tried):
        layers = _get_path(model, path)
        if layers is not None and _looks_like_layers(layers):
            return layers
    # Generic rule: the first ModuleList whose every block has an attention and an MLP, preferring one whose MLPs
    # are gated: a multimodal model's vision encoder (CLIP, SigLIP) also has such blocks, often registered before
    # the language model, but its MLP (fc1/fc2) has no gate. Without a gated candidate the first one is returned.
    candidates = [module for _, module in model.named_modules() if _looks_like_layers(module)]
    for module in candidates:
        if all(_has_gate(_block_mlp(block)) for block in module):
            return module
    if candidates:
        return candidates[0]
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__} (model_type={model_type!r}): looked for "
        f"{', '.join(dict.fromkeys(tried))} and any nn.ModuleList of blocks that have .self_attn and .mlp (or "
        f"another attention: {'/'.join(_ATTN_ATTRS[1:])}; MLP: {'/'.join(_MLP_ATTRS[1:])}, fc1 on the block); not "
        "supported: "
        "encoder-decoder and encoder-only models, state-space/recurrent blocks"
    )


def _head_counts(attn: nn.Module, config) -> tuple[int | None, int | None, int | None]:
    heads = (
        getattr(attn, "num_heads", None)
        or getattr(config, "num_attention_heads", None)
        or getattr(config, "n_head", None)
    )
    kv_heads = getattr(attn, "num_key_value_heads", None) or getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(attn, "head_dim", None) or getattr(config, "head_dim", None)
    if head_dim is None and heads:
        head_dim = config.hidden_size // heads
    return heads, kv_heads, head_dim


def _attn_widths(attn: nn.Module, config, fused_width: int, layer: int) -> tuple[int, int]:
    """(q width, k/v width) of a fused [q | k | v] projection."""
    heads, kv_heads, head_dim = _head_counts(attn, config)
    if not (heads and head_dim) or heads * head_dim + 2 * kv_heads * head_dim != fused_width:
        raise ValueError(
            f"layer {layer}: cannot split the fused qkv_proj of width {fused_width} into q, k, v "
            f"(num_attention_heads={heads}, num_key_value_heads={kv_heads}, head_dim={head_dim})"
        )
    return heads * head_dim, kv_heads * head_dim


def _interleaved_columns(groups: int, slots: int, head_dim: int, q_slots: int) -> tuple[torch.Tensor, ...]:
    """Columns of q, k, v in an output laid out as ``[groups, slots, head_dim]`` where each group holds ``q_slots``
    query heads, then one key head, then one value head (``slots = q_slots + 2``)."""
    layout = torch.arange(groups * slots * head_dim, dtype=torch.int64).view(groups, slots, head_dim)
    q = layout[:, :q_slots].reshape(-1)
    k = layout[:, q_slots].reshape(-1)
    v = layout[:, q_slots + 1].reshape(-1)
    return q.contiguous(), k.contiguous(), v.contiguous()


def _fused_qkv_sites(prefix: str, layer: int, attn: nn.Module, fused: nn.Module, config) -> list[Site]:
    """q, k, v sites of a fused projection, by family (see the module docstring)."""
    width = out_width(fused)
    names = [f"{prefix}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")]
    model_type = getattr(config, "model_type", None)
    heads, kv_heads, head_dim = _head_counts(attn, config)
    if model_type == "gpt_neox":  # per head [q_h | k_h | v_h]
        if not (heads and head_dim) or 3 * heads * head_dim != width:
            raise ValueError(f"layer {layer}: cannot split GPT-NeoX query_key_value of width {width}")
        cols = _interleaved_columns(heads, 3, head_dim, 1)
        return [Site(n, layer, ATTN, int(c.numel()), fused, columns=c) for n, c in zip(names, cols)]
    if model_type == "falcon":
        new_arch = bool(getattr(config, "new_decoder_architecture", False))
        multi_query = bool(getattr(config, "multi_query", False))
        head_dim = config.hidden_size // config.num_attention_heads
        heads = config.num_attention_heads
        if new_arch:  # per kv group [q_1 .. q_r | k | v]
            kv = config.num_kv_heads
            cols = _interleaved_columns(kv, heads // kv + 2, head_dim, heads // kv)
        elif not multi_query:  # per head [q_h | k_h | v_h]
            cols = _interleaved_columns(heads, 3, head_dim, 1)
        else:  # [q (all heads) | k | v], one key/value head
            q_w = heads * head_dim
            return [
                Site(names[0], layer, ATTN, q_w, fused, start=0),
                Site(names[1], layer, ATTN, head_dim, fused, start=q_w),
                Site(names[2], layer, ATTN, head_dim, fused, start=q_w + head_dim),
            ]
        if sum(int(c.numel()) for c in cols) != width:
            raise ValueError(f"layer {layer}: cannot split Falcon query_key_value of width {width}")
        return [Site(n, layer, ATTN, int(c.numel()), fused, columns=c) for n, c in zip(names, cols)]
    q_width, kv_width = _attn_widths(attn, config, width, layer)  # contiguous [q | k | v]: Phi-3, GPT-2
    return [
        Site(names[0], layer, ATTN, q_width, fused, start=0),
        Site(names[1], layer, ATTN, kv_width, fused, start=q_width),
        Site(names[2], layer, ATTN, kv_width, fused, start=q_width + kv_width),
    ]


def gate_up_weight(experts: nn.Module) -> torch.Tensor:
    """The 3-D ``gate_up_proj`` parameter ``[experts, 2 * intermediate, hidden]`` of a fused experts module."""
    weight = getattr(experts, "gate_up_proj", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
        raise ValueError(
            f"{type(experts).__name__}: expected experts stored as a 3-D gate_up_proj parameter [experts, 2 * "
            "intermediate, hidden] (transformers >= 5); experts kept as a ModuleList of MLPs are not supported"
        )
    return weight


def expert_sites(prefix: str, layer: int, experts: nn.Module) -> list[Site]:
    """One MLP site per expert: ``{prefix}.mlp.experts.{e}.gate_proj`` of width I (the expert's gate neurons)."""
    weight = gate_up_weight(experts)
    if getattr(experts, "has_gate", True) is False or getattr(experts, "has_post_expert_norm", False):
        raise ValueError(f"layer {layer}: {type(experts).__name__} has no gate or a post-expert norm; not supported")
    fused = weight.shape[2] if getattr(experts, "is_transposed", False) else weight.shape[1]
    width = int(fused) // 2
    columns = None
    if getattr(experts, "is_concatenated", True) is False:  # [gate0, up0, gate1, up1, ...]
        columns = torch.arange(0, 2 * width, 2, dtype=torch.int64)
    return [
        Site(f"{prefix}.mlp.experts.{e}.gate_proj", layer, MLP, width, experts, columns=columns, expert=e)
        for e in range(int(weight.shape[0]))
    ]


def _mlp_sites(prefix: str, layer: int, mlp: nn.Module) -> list[Site]:
    name = f"{prefix}.mlp.gate_proj"
    gate = getattr(mlp, "gate_proj", None)
    if out_width(gate) is not None:
        return [Site(name, layer, MLP, out_width(gate), gate)]
    fused = getattr(mlp, "gate_up_proj", None)
    if out_width(fused) is not None:
        return [Site(name, layer, MLP, out_width(fused) // 2, fused, start=0)]
    experts = getattr(mlp, "experts", None)
    if isinstance(experts, nn.Module):
        sites = expert_sites(prefix, layer, experts)
        shared = getattr(mlp, "shared_expert", None)
        if shared is not None:
            shared_gate = getattr(shared, "gate_proj", None)
            if out_width(shared_gate) is None:
                raise ValueError(f"layer {layer}: the shared expert {type(shared).__name__} has no gate_proj")
            sites.append(Site(f"{prefix}.mlp.shared_expert.gate_proj", layer, MLP, out_width(shared_gate), shared_gate))
        return sites
    for attr in _UNGATED_INPUTS:  # gate-less MLP: the input projection is the gate's analogue
        module = getattr(mlp, attr, None)
        if out_width(module) is not None:
            return [Site(name, layer, MLP, out_width(module), module)]
    raise ValueError(
        f"layer {layer}: looked for mlp.gate_proj, mlp.gate_up_proj, mlp.experts (mixture of experts) or a gate-less "
        f"input projection ({', '.join(_UNGATED_INPUTS)}) in {type(mlp).__name__}"
    )


def _attn_sites(prefix: str, layer: int, attn: nn.Module, config) -> list[Site]:
    if all(out_width(getattr(attn, p, None)) is not None for p in ("q_proj", "k_proj", "v_proj")):
        return [
            Site(f"{prefix}.self_attn.{p}", layer, ATTN, out_width(getattr(attn, p)), getattr(attn, p))
            for p in ("q_proj", "k_proj", "v_proj")
        ]
    for attr in ("qkv_proj", "c_attn", "query_key_value"):
        fused = getattr(attn, attr, None)
        if out_width(fused) is not None:
            return _fused_qkv_sites(prefix, layer, attn, fused, config)
    raise ValueError(
        f"layer {layer}: looked for self_attn.q_proj/k_proj/v_proj or self_attn.qkv_proj (or a fused c_attn / "
        f"query_key_value) in {type(attn).__name__} (attention with low-rank or latent projections is not supported)"
    )


def _layer_sites(layer: int, block: nn.Module, config, kinds: tuple[str, ...]) -> Iterator[Site]:
    prefix = f"layers.{layer}"
    if MLP in kinds:
        yield from _mlp_sites(prefix, layer, _block_mlp(block))
    if ATTN in kinds:
        yield from _attn_sites(prefix, layer, _block_attn(block), config)


def neuron_sites(model: nn.Module, kinds: tuple[str, ...] = KINDS) -> list[Site]:
    """All neuron sites of ``model`` in layer order (per layer: gate(s), then q, k, v).

    Supported: the families in the module docstring's table (gated, fused, gate-less and mixture-of-experts MLPs;
    separate, fused and interleaved q/k/v), also wrapped in PEFT adapters or quantised layers. Not supported, and
    refused with an error saying what was looked for: encoder-decoder and encoder-only models, experts kept as a
    ``ModuleList`` of MLPs or without a gate, state-space/recurrent blocks, latent (MLA) attention.

    Args:
        model: a Hugging Face decoder LM (``*ForCausalLM``, or ``Gemma3ForConditionalGeneration``).
        kinds: which kinds to list, ``("mlp", "attn")`` by default.

    Raises:
        ValueError: naming what was looked for, when the model cannot be mapped.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown site kind(s) {sorted(unknown)}; expected a subset of {KINDS}")
    config = text_config(model)
    sites: list[Site] = []
    for layer, block in enumerate(decoder_layers(model)):
        sites.extend(_layer_sites(layer, block, config, kinds))
    return sites


def select_sites(model: nn.Module, names: list[str] | None = None) -> list[Site]:
    """The sites of ``model`` named in ``names`` (all sites when None), in model order; unknown names are refused."""
    sites = neuron_sites(model)
    if names is None:
        return sites
    by_name = {site.name: site for site in sites}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ValueError(f"unknown site(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}; e.g. {sites[0].name!r}")
    wanted = set(names)
    return [site for site in sites if site.name in wanted]


def site_names(model: nn.Module, spec: str | None) -> list[str] | None:
    """Site names from a comma-separated spec of site names and/or kinds (``mlp``, ``attn``); None for all sites."""
    if spec is None or spec.strip() in ("", "all"):
        return None
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part in KINDS:
            names.extend(site.name for site in neuron_sites(model, (part,)))
        else:
            parse_site_name(part)
            names.append(part)
    return list(dict.fromkeys(names))
