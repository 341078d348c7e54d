"""Wrapped and quantised projections: score those whose backward works, refuse the others by name.

A site's module need not be an ``nn.Linear``: PEFT LoRA layers (scored as the merged layer they compute, since
their output *is* base + LoRA), bitsandbytes 4/8-bit layers, or any wrapper exposing ``out_features``. What
attribution needs is a gradient from the module's output back to its input. ``check_differentiable`` runs each
such module once on a one-token random input and refuses, naming the module, one whose output has no gradient path
or whose backward raises. Plain ``nn.Linear`` and transformers' ``Conv1D`` are trusted without the probe.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class NotDifferentiableError(ValueError):
    """A site's module cannot pass a gradient back (e.g. a quantised layer without a backward)."""


def _trusted(module: nn.Module) -> bool:
    return type(module) is nn.Linear or type(module).__name__ == "Conv1D" or type(module).__name__ == "FalconLinear"


def _in_features(module: nn.Module) -> int | None:
    width = getattr(module, "in_features", None)
    if isinstance(width, int) and width > 0:
        return width
    if type(module).__name__ == "Conv1D":
        return int(module.weight.shape[0])
    return None


def _first_float_param(module: nn.Module) -> torch.Tensor | None:
    for p in module.parameters():
        if p.dtype.is_floating_point:
            return p
    return None


def check_differentiable(sites: Sequence, names: dict[int, str] | None = None) -> None:
    """Refuse sites whose module has no working backward.

    Args:
        sites: ``Site`` objects (MoE expert sites are skipped: their module is the experts container, computed by
            ``culnig_ext.moe`` with differentiable ops).
        names: ``{id(module): dotted path}`` for the error message (the type name is used without it).

    Raises:
        NotDifferentiableError: naming the module path, its type and the site.
    """
    seen: set[int] = set()
    for site in sites:
        module = site.module
        if site.expert is not None or id(module) in seen or _trusted(module):
            continue
        seen.add(id(module))
        where = (names or {}).get(id(module), type(module).__name__)
        width = _in_features(module)
        param = _first_float_param(module)
        if width is None:
            continue  # nothing to probe with; the scorer's runtime check still refuses a missing gradient
        dtype = param.dtype if param is not None else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        x = torch.randn(1, 1, width, dtype=dtype, device=device, requires_grad=True)
        try:
            with torch.enable_grad():
                out = module(x)
                if not isinstance(out, torch.Tensor) or not out.requires_grad:
                    raise NotDifferentiableError(
                        f"site {site.name}: module {where} ({type(module).__name__}) returns an output with no "
                        "gradient path to its input, so its neurons cannot be attributed (a quantised layer without "
                        "a backward?); dequantise it or leave its sites out (sites=...)"
                    )
                torch.autograd.grad(out.float().sum(), [x])
        except NotDifferentiableError:
            raise
        except Exception as exc:
            raise NotDifferentiableError(
                f"site {site.name}: the backward of module {where} ({type(module).__name__}) fails: "
                f"{type(exc).__name__}: {exc}; dequantise it or leave its sites out (sites=...)"
            ) from exc
