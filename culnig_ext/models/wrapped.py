"""Wrapped and quantised projections: score those whose backward works, refuse the others by name.

A site's module need not be an ``nn.Linear``: PEFT LoRA layers (scored as the merged layer they compute, since
their output *is* base + LoRA), bitsandbytes 4/8-bit layers, or any wrapper exposing ``out_features``. What
attribution needs is a gradient from the module's output back to its input. ``check_differentiable`` runs each
such module once on a one-token random input and refuses, naming the module, one whose output has no gradient path
or whose backward raises. Plain ``nn.Linear`` and transformers' ``Conv1D`` are trusted without the probe; every
other projection of the model is probed, since the backward of every earlier neuron runs through it.
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


def _probe_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The input dtype and device a module expects: its compute dtype (bitsandbytes) or first float parameter's
    dtype; the device of any of its tensors (a 4-bit weight is uint8 but sits on the right device)."""
    tensors = list(module.parameters()) + list(module.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = getattr(module, "compute_dtype", None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        dtype = next((t.dtype for t in tensors if t.dtype.is_floating_point), torch.float32)
    return dtype, device


def check_differentiable(model: nn.Module, sites: Sequence = ()) -> None:
    """Refuse a model holding a projection without a working backward.

    Every projection module of the model (see ``sites.out_width``) that is not a plain ``nn.Linear``/``Conv1D``
    is probed, not only the chosen sites' modules: the backward pass runs through every layer between the output
    and the embeddings, so one module without a backward breaks (or, computed outside autograd, silently
    truncates) the attribution of every neuron before it.

    Args:
        model: the model to be scored.
        sites: the chosen ``Site`` objects, to name the site a refused module holds.

    Raises:
        NotDifferentiableError: naming the module path, its type and (when it holds one) the site.
    """
    from culnig_ext.models.sites import out_width

    site_of = {id(site.module): site.name for site in sites}
    probed: list[str] = []
    for path, module in model.named_modules():
        if out_width(module) is None or _trusted(module) or any(path.startswith(p + ".") for p in probed):
            continue
        width = _in_features(module)
        if width is None:
            continue  # nothing to probe with; the scorer's runtime check still refuses a missing gradient
        probed.append(path)
        where = f"site {site_of[id(module)]}: " if id(module) in site_of else ""
        what = f"module {path} ({type(module).__name__})"
        dtype, device = _probe_dtype_device(module)
        x = torch.randn(1, 1, width, dtype=dtype, device=device, requires_grad=True)
        advice = "; dequantise it: attribution needs its backward, for its own neurons and every neuron before it"
        try:
            with torch.enable_grad():
                out = module(x)
                if not isinstance(out, torch.Tensor) or not out.requires_grad:
                    raise NotDifferentiableError(
                        f"{where}{what} returns an output with no gradient path to its input (a quantised layer "
                        f"computed outside autograd?){advice}"
                    )
                torch.autograd.grad(out.float().sum(), [x])
        except NotDifferentiableError:
            raise
        except Exception as exc:
            raise NotDifferentiableError(
                f"{where}the backward of {what} fails: {type(exc).__name__}: {exc}{advice}"
            ) from exc
