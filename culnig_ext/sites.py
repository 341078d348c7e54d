"""Where a model keeps its neurons: the MLP gate and attention q/k/v output channels of every decoder layer.

A *site* is one projection's output, seen as ``[..., width]`` neurons. Site names follow the module path inside
the decoder (``layers.{i}.mlp.gate_proj``, ``layers.{i}.self_attn.q_proj`` ...), also for models that fuse the
projections (Phi-3/Phi-4: ``gate_up_proj`` holds gate then up; ``qkv_proj`` holds q, then k, then v): there the
site is a column slice ``[start, start + width)`` of the fused output, taken with no copy.

The architecture table names where each model family keeps its decoder layers; anything else with the usual
module names is found by a generic search, and a model that cannot be mapped is refused with an error that names
what was looked for.
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
}

_SITE_NAME = re.compile(r"^layers\.(\d+)\.(mlp\.gate_proj|self_attn\.[qkv]_proj)$")


@dataclass(frozen=True, eq=False)
class Site:
    """One neuron site.

    Attributes:
        name: logical name, e.g. ``layers.3.self_attn.k_proj`` (the same for fused and unfused models).
        layer: decoder layer index.
        kind: ``"mlp"`` (gate neurons) or ``"attn"`` (q/k/v neurons).
        width: number of neurons N.
        module: the ``nn.Linear`` whose output holds the neurons.
        start: first column of the site inside the module's output (non-zero only for fused projections).
    """

    name: str
    layer: int
    kind: str
    width: int
    module: nn.Module
    start: int = 0

    def view(self, output: torch.Tensor) -> torch.Tensor:
        """The site's neurons inside ``module``'s output ``[..., out_features]`` -> ``[..., width]`` (a view)."""
        if self.start == 0 and output.shape[-1] == self.width:
            return output
        return output.narrow(-1, self.start, self.width)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device


def parse_site_name(name: str) -> tuple[int, str]:
    """``layers.{i}.mlp.gate_proj`` -> ``(i, "mlp")``; ``layers.{i}.self_attn.q_proj`` -> ``(i, "attn")``."""
    match = _SITE_NAME.match(name)
    if match is None:
        raise ValueError(
            f"not a site name: {name!r} (expected 'layers.<i>.mlp.gate_proj' or 'layers.<i>.self_attn.<q|k|v>_proj')"
        )
    return int(match.group(1)), MLP if match.group(2).startswith("mlp") else ATTN


def _text_config(model: nn.Module):
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


def _looks_like_layers(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.ModuleList)
        and len(module) > 0
        and all(hasattr(block, "self_attn") and hasattr(block, "mlp") for block in module)
    )


def _has_gate(mlp: nn.Module) -> bool:
    return isinstance(getattr(mlp, "gate_proj", None), nn.Linear) or isinstance(
        getattr(mlp, "gate_up_proj", None), nn.Linear
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
    # Generic rule: the first ModuleList whose every block has .self_attn and .mlp, preferring one whose MLPs are
    # gated: a multimodal model's vision encoder (CLIP, SigLIP) also has .self_attn/.mlp blocks, often registered
    # before the language model, but its MLP (fc1/fc2) has no gate. Without a gated candidate the first one is
    # returned, so that the per-layer check names what its MLP lacks.
    candidates = [module for _, module in model.named_modules() if _looks_like_layers(module)]
    for module in candidates:
        if all(_has_gate(block.mlp) for block in module):
            return module
    if candidates:
        return candidates[0]
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__} (model_type={model_type!r}): looked for "
        f"{', '.join(dict.fromkeys(tried))} and any nn.ModuleList of blocks that have .self_attn and .mlp"
    )


def _attn_widths(attn: nn.Module, config, fused_width: int, layer: int) -> tuple[int, int]:
    """(q width, k/v width) of a fused qkv projection."""
    heads = getattr(attn, "num_heads", None) or getattr(config, "num_attention_heads", None)
    kv_heads = getattr(attn, "num_key_value_heads", None) or getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(attn, "head_dim", None) or getattr(config, "head_dim", None)
    if head_dim is None and heads:
        head_dim = config.hidden_size // heads
    if not (heads and head_dim) or heads * head_dim + 2 * kv_heads * head_dim != fused_width:
        raise ValueError(
            f"layer {layer}: cannot split the fused qkv_proj of width {fused_width} into q, k, v "
            f"(num_attention_heads={heads}, num_key_value_heads={kv_heads}, head_dim={head_dim})"
        )
    return heads * head_dim, kv_heads * head_dim


def _layer_sites(layer: int, block: nn.Module, config, kinds: tuple[str, ...]) -> Iterator[Site]:
    prefix = f"layers.{layer}"
    if MLP in kinds:
        mlp = block.mlp
        if isinstance(getattr(mlp, "gate_proj", None), nn.Linear):
            yield Site(f"{prefix}.mlp.gate_proj", layer, MLP, mlp.gate_proj.out_features, mlp.gate_proj)
        elif isinstance(getattr(mlp, "gate_up_proj", None), nn.Linear):
            fused = mlp.gate_up_proj
            yield Site(f"{prefix}.mlp.gate_proj", layer, MLP, fused.out_features // 2, fused, start=0)
        else:
            raise ValueError(
                f"layer {layer}: looked for mlp.gate_proj or mlp.gate_up_proj (nn.Linear) in {type(mlp).__name__}"
            )
    if ATTN in kinds:
        attn = block.self_attn
        if all(isinstance(getattr(attn, p, None), nn.Linear) for p in ("q_proj", "k_proj", "v_proj")):
            for proj in ("q_proj", "k_proj", "v_proj"):
                module = getattr(attn, proj)
                yield Site(f"{prefix}.self_attn.{proj}", layer, ATTN, module.out_features, module)
        elif isinstance(getattr(attn, "qkv_proj", None), nn.Linear):
            fused = attn.qkv_proj
            q_width, kv_width = _attn_widths(attn, config, fused.out_features, layer)
            yield Site(f"{prefix}.self_attn.q_proj", layer, ATTN, q_width, fused, start=0)
            yield Site(f"{prefix}.self_attn.k_proj", layer, ATTN, kv_width, fused, start=q_width)
            yield Site(f"{prefix}.self_attn.v_proj", layer, ATTN, kv_width, fused, start=q_width + kv_width)
        else:
            raise ValueError(
                f"layer {layer}: looked for self_attn.q_proj/k_proj/v_proj or self_attn.qkv_proj (nn.Linear) in "
                f"{type(attn).__name__}"
            )


def neuron_sites(model: nn.Module, kinds: tuple[str, ...] = KINDS) -> list[Site]:
    """All neuron sites of ``model`` in layer order (per layer: gate, then q, k, v).

    Args:
        model: a Hugging Face decoder LM (``*ForCausalLM``, or ``Gemma3ForConditionalGeneration``).
        kinds: which kinds to list, ``("mlp", "attn")`` by default.

    Raises:
        ValueError: naming what was looked for, when the model cannot be mapped.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown site kind(s) {sorted(unknown)}; expected a subset of {KINDS}")
    config = _text_config(model)
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
