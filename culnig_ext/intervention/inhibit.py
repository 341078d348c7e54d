"""Inhibit chosen neurons: zero (or scale) their outputs with forward hooks, and take the hooks off again.

``inhibit(model, neurons)`` registers one forward hook per projection module that holds chosen neurons. The hook
returns a new output tensor in which the chosen columns (``site.start + index``, so fused Phi-3 ``gate_up_proj`` /
``qkv_proj`` modules work) are zeroed (``mode="zero"``) or multiplied by ``factor`` (``mode="scale"``). Weights are
never touched, so removing the hooks restores the model exactly. The result is both a handle with ``.remove()``
and a context manager that removes the hooks on exit, also when the body raises.

What zeroing means:
- An attention neuron (a q/k/v output channel) set to 0 is the same as zeroing that row of the projection weight
  (and its bias): the channel is 0 before RoPE and q/k-norm, as it would be with the weights ablated.
- A gate neuron ``j`` set to 0 gives ``act(0) * up_j`` in the MLP. For SiLU, GELU (exact and tanh) and ReLU,
  ``act(0) = 0``, so this equals removing neuron ``j`` from the MLP (its ``down_proj`` column then receives 0).
  For an activation with ``act(0) != 0`` (e.g. sigmoid, softplus) zeroing the gate is *not* removal: the neuron
  still passes ``act(0) * up_j`` on. ``inhibit`` checks ``act(0)`` of every MLP it hooks in zero mode and warns
  when it is not 0.

The hooks use out-of-place ops (``index_fill`` / ``index_copy``), so autograd works through them; no gradient flows
into a zeroed column. Index tensors are moved to each output's device once and cached, so models spread over
several devices (``device_map``) work.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import torch
from torch import nn

from culnig_ext.models import moe
from culnig_ext.models.sites import MLP, Site, decoder_layers, neuron_sites, parse_site_name

MODES = ("zero", "scale")


def _as_index_map(neurons: Any) -> dict[str, torch.Tensor]:
    """``NeuronSet`` (anything with ``.by_site()``) or ``{site: indices}`` -> ``{site: LongTensor}`` (CPU)."""
    if hasattr(neurons, "by_site") and callable(neurons.by_site):
        raw = neurons.by_site()
    elif isinstance(neurons, Mapping):
        raw = neurons
    else:
        raise TypeError(
            f"neurons must be a NeuronSet or a {{site: indices}} mapping, got {type(neurons).__name__}"
        )
    out: dict[str, torch.Tensor] = {}
    for site, indices in raw.items():
        if not isinstance(site, str):
            raise TypeError(f"site names must be strings, got {site!r} ({type(site).__name__})")
        try:
            idx = torch.as_tensor(indices if not isinstance(indices, torch.Tensor) else indices.detach().cpu())
        except (TypeError, ValueError) as exc:
            raise ValueError(f"site {site!r}: indices must be integers ({exc})") from exc
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise ValueError(f"site {site!r}: indices must be integers, got dtype {idx.dtype}")
        out[site] = idx.reshape(-1).to(torch.int64)
    return out


def _activation_at_zero(mlp: nn.Module) -> float | None:
    """``act(0)`` of a gated MLP's activation, or None when the activation cannot be found."""
    for attr in ("act_fn", "activation_fn", "act"):
        act = getattr(mlp, attr, None)
        if callable(act):
            param = next(mlp.parameters(), None)
            zero = torch.zeros(1, device=param.device if param is not None else None)
            with torch.no_grad():
                return float(act(zero).item())
    return None


class _ModuleHook:
    """The hook of one module: fixed output columns, zeroed or scaled; index tensors cached per device."""

    def __init__(self, columns: torch.Tensor, mode: str, factor: float | None) -> None:
        self.columns = columns
        self.mode = mode
        self.factor = factor
        self._by_device: dict[torch.device, torch.Tensor] = {}

    def _index(self, device: torch.device) -> torch.Tensor:
        index = self._by_device.get(device)
        if index is None:
            index = self.columns.to(device)
            self._by_device[device] = index
        return index

    def __call__(self, module: nn.Module, args: tuple, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"inhibit: {type(module).__name__} returned {type(output).__name__}; expected a tensor [..., features]"
            )
        index = self._index(output.device)
        if self.mode == "zero":
            # Out-of-place: the module's own output stays intact for autograd, and exact zeros (not x * 0, which
            # keeps inf/nan) go downstream.
            return output.index_fill(-1, index, 0.0)
        scaled = output.index_select(-1, index) * self.factor
        return output.index_copy(-1, index, scaled)


class _ExpertHook:
    """An MoE experts module's tap: per expert, fixed gate columns of its gate/up output, zeroed or scaled."""

    def __init__(self, by_expert: dict[int, torch.Tensor], mode: str, factor: float | None) -> None:
        self.hooks = {e: _ModuleHook(columns, mode, factor) for e, columns in by_expert.items()}

    def __call__(self, expert: int, gate_up: torch.Tensor, token_idx: torch.Tensor,
                 token_idx_host: torch.Tensor) -> torch.Tensor | None:
        hook = self.hooks.get(expert)
        return None if hook is None else hook(None, (), gate_up)


class Inhibition:
    """Hooks that inhibit neurons; a handle (``.remove()``) and a context manager (removes on exit).

    Attributes:
        mode: ``"zero"`` or ``"scale"``.
        factor: the scale factor (None in zero mode).
        indices: ``{site name: LongTensor}`` sorted unique neuron indices per site (CPU).
    """

    def __init__(
        self, model: nn.Module, neurons: Any, mode: str = "zero", factor: float | None = None
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "zero" and factor is not None:
            raise ValueError(f"mode='zero' takes no factor (got factor={factor!r}); use mode='scale'")
        if mode == "scale":
            if factor is None or isinstance(factor, bool) or not isinstance(factor, (int, float)):
                raise ValueError(f"mode='scale' needs a numeric factor, got {factor!r}")
            if not math.isfinite(float(factor)):
                raise ValueError(f"factor must be finite, got {factor!r}")
            factor = float(factor)
        self.mode = mode
        self.factor = factor
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

        wanted = _as_index_map(neurons)
        for name in wanted:
            parse_site_name(name)  # a malformed name gets the parser's message, which names it
        sites = {site.name: site for site in neuron_sites(model)}
        unknown = [name for name in wanted if name not in sites]
        if unknown:
            raise ValueError(
                f"unknown site(s) {unknown[:5]}{' ...' if len(unknown) > 5 else ''} for {type(model).__name__} "
                f"(it has {len(sites)} sites, e.g. {next(iter(sites))!r})"
            )
        self.indices: dict[str, torch.Tensor] = {}
        per_module: dict[int, tuple[nn.Module, list[torch.Tensor]]] = {}
        experts: dict[int, tuple[nn.Module, dict[int, torch.Tensor]]] = {}
        for name, site in sites.items():  # model order
            if name not in wanted:
                continue
            idx = torch.unique(wanted[name])  # sorted
            if idx.numel() == 0:
                continue
            bad = idx[(idx < 0) | (idx >= site.width)]
            if bad.numel():
                raise ValueError(
                    f"site {name!r}: neuron index {int(bad[0])} outside [0, {site.width})"
                )
            self.indices[name] = idx
            if site.expert is not None:  # MoE expert: its gate columns inside that expert's gate/up output
                experts.setdefault(id(site.module), (site.module, {}))[1][site.expert] = site.output_columns(idx)
                continue
            entry = per_module.setdefault(id(site.module), (site.module, []))
            entry[1].append(site.output_columns(idx))
        if mode == "zero":
            self._check_gate_activation(model, [sites[n] for n in self.indices])
        try:
            for module, column_lists in per_module.values():
                columns = torch.cat(column_lists)
                self._handles.append(module.register_forward_hook(_ModuleHook(columns, mode, factor)))
            for module, by_expert in experts.values():
                self._handles.append(moe.tap(module, _ExpertHook(by_expert, mode, factor)))
        except BaseException:
            self.remove()
            raise

    @staticmethod
    def _check_gate_activation(model: nn.Module, sites: list[Site]) -> None:
        layers = None
        for site in sites:
            if site.kind != MLP:
                continue
            if layers is None:
                layers = decoder_layers(model)
            block = layers[site.layer]
            value = _activation_at_zero(getattr(block, "mlp", block))
            if value is not None and value != 0.0:
                warnings.warn(
                    f"{site.name}: the MLP activation gives act(0) = {value:g} != 0, so zeroing a gate neuron does "
                    "not remove it from the MLP (it still passes act(0) * up on)",
                    stacklevel=3,
                )

    @property
    def active(self) -> bool:
        """True while the hooks are registered."""
        return bool(self._handles)

    @property
    def num_neurons(self) -> int:
        return sum(int(idx.numel()) for idx in self.indices.values())

    def remove(self) -> None:
        """Remove every hook (idempotent). The model is then exactly as before."""
        handles, self._handles = self._handles, []
        errors = []
        for handle in handles:
            try:
                handle.remove()
            except Exception as exc:  # keep removing the others, then report
                errors.append(exc)
        if errors:
            raise RuntimeError(f"failed to remove {len(errors)} inhibition hook(s): {errors[0]!r}") from errors[0]

    def __enter__(self) -> "Inhibition":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def __repr__(self) -> str:
        what = "zero" if self.mode == "zero" else f"scale x{self.factor:g}"
        state = "active" if self.active else "removed"
        return f"Inhibition({self.num_neurons} neurons in {len(self.indices)} sites, {what}, {state})"


def inhibit(model: nn.Module, neurons: Any, mode: str = "zero", factor: float | None = None) -> Inhibition:
    """Zero (``mode="zero"``) or scale by ``factor`` (``mode="scale"``) the outputs of chosen neurons.

    The hooks are active as soon as this returns. Use as ``with inhibit(model, s): ...`` (removed on exit) or keep
    the handle and call ``.remove()``.

    Args:
        model: a Hugging Face decoder LM (any device layout, any float dtype).
        neurons: a ``NeuronSet`` or ``{site name: indices}`` (a list, tuple or integer tensor per site).
        mode: ``"zero"`` or ``"scale"``.
        factor: the multiplier in scale mode (e.g. 2.0 to enhance, as the reference does).

    Raises:
        ValueError: unknown site name, index outside the site's width, bad mode/factor — naming the site.
    """
    return Inhibition(model, neurons, mode=mode, factor=factor)
