"""Mixture-of-experts MLPs: per-expert gate neurons, seen only on the tokens the router sends to each expert.

transformers 5.x keeps a family's experts as one module with 3-D parameters (``gate_up_proj [E, 2I, H]``,
``down_proj [E, H, I]``; Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) and may dispatch its forward to fused kernels
(``grouped_mm``, ``batched_mm``) that never materialise one expert's gate output. To see those outputs, ``tap``
swaps the experts module's ``forward`` (an instance attribute, removed again by the handle) for the plain per-expert
loop below, which honours the layout flags that ``transformers.integrations.use_experts_implementation`` sets
(``is_transposed``, ``is_concatenated``, ``has_bias``) and calls the module's own ``_apply_gate``; each registered
tap sees expert ``e``'s ``gate_up`` output ``[routed tokens, 2I]`` and the flat token positions it came from
(``[routed tokens]`` int64 into the block's ``[B * T]`` rows), and may return a replacement (inhibition).

The scorer and ``inhibit`` use the taps; nothing else in the package knows about experts. Written by hand because
transformers exposes no per-expert hook point; the loop is the same computation as the families' eager forward.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from culnig_ext.models.sites import gate_up_weight

# (expert index, gate_up [n, 2I], token positions [n] on gate_up's device, the same positions on the host) ->
# replacement gate_up or None
ExpertTap = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], "torch.Tensor | None"]

_TAPS = "_culnig_expert_taps"


def _project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transposed: bool) -> torch.Tensor:
    out = x @ weight if transposed else F.linear(x, weight)
    return out + bias if bias is not None else out


def route(top_k_index: torch.Tensor,
          num_experts: int) -> list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(expert, token rows, top-k slots, token rows on the host)`` of every expert that gets a token, in expert
    order; within an expert the ``(row, slot)`` pairs in row-major order, as ``torch.where(top_k_index == e)`` gives
    them (so the loop adds in the same order, bit for bit). Rows and slots are int64 ``[n]`` on ``top_k_index``'s
    device; the host rows are their CPU copy, for taps that build per-expert token lists without a copy back.
    One stable sort and one copy to the host per call (the counts and the sorted order together), instead of a
    ``unique`` and one ``where`` per expert (each a device-to-host synchronisation on a GPU). Indices outside
    ``[0, num_experts)`` (expert parallelism marks other ranks' experts with ``num_experts``) are skipped."""
    k = top_k_index.shape[-1]
    flat = top_k_index.reshape(-1)
    valid = (flat >= 0) & (flat < num_experts)
    bucket = torch.where(valid, flat, torch.full_like(flat, num_experts))
    order = torch.argsort(bucket, stable=True)
    counts = torch.bincount(bucket, minlength=num_experts + 1)[:num_experts]
    host = torch.cat([counts, order.to(counts.dtype)]).cpu()  # the one host copy
    counts_host, order_host = host[:num_experts].tolist(), host[num_experts:]
    out, start = [], 0
    for e, n in enumerate(counts_host):
        if n:
            picked = order[start:start + n]
            rows_host = torch.div(order_host[start:start + n], k, rounding_mode="floor")
            out.append((e, torch.div(picked, k, rounding_mode="floor"), picked % k, rows_host))
        start += n
    return out


def _tapped_forward(experts: nn.Module) -> Callable:
    def forward(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        transposed = bool(getattr(experts, "is_transposed", False))
        has_bias = bool(getattr(experts, "has_bias", False))
        out = torch.zeros_like(hidden_states)
        num_experts = int(experts.gate_up_proj.shape[0])
        for e, token_idx, top_k_pos, token_idx_host in route(top_k_index, num_experts):
            gate_up = _project(
                hidden_states[token_idx],
                experts.gate_up_proj[e],
                experts.gate_up_proj_bias[e] if has_bias else None,
                transposed,
            )
            for tap in list(getattr(experts, _TAPS)):
                replaced = tap(e, gate_up, token_idx, token_idx_host)
                if replaced is not None:
                    gate_up = replaced
            hidden = experts._apply_gate(gate_up)
            hidden = _project(hidden, experts.down_proj[e], experts.down_proj_bias[e] if has_bias else None, transposed)
            hidden = hidden * top_k_weights[token_idx, top_k_pos, None]
            out.index_add_(0, token_idx, hidden.to(out.dtype))
        return out

    return forward


class TapHandle:
    """Removes one tap; the experts module gets its own forward back when its last tap is removed."""

    def __init__(self, experts: nn.Module, fn: ExpertTap) -> None:
        self.experts, self.fn = experts, fn

    def remove(self) -> None:
        taps = getattr(self.experts, _TAPS, None)
        if taps is None or self.fn not in taps:
            return
        taps.remove(self.fn)
        if not taps:
            delattr(self.experts, _TAPS)
            self.experts.__dict__.pop("forward", None)


def tap(experts: nn.Module, fn: ExpertTap) -> TapHandle:
    """Call ``fn`` on every expert's gate/up output during ``experts``' forward; returns a handle with ``remove()``.

    Taps run in registration order; a tap that returns a tensor replaces ``gate_up`` for the ones after it.
    """
    gate_up_weight(experts)
    if not hasattr(experts, "_apply_gate"):
        raise ValueError(f"{type(experts).__name__} has no _apply_gate (not a transformers 5 experts module)")
    if not hasattr(experts, _TAPS):
        setattr(experts, _TAPS, [])
        experts.forward = _tapped_forward(experts)
    getattr(experts, _TAPS).append(fn)
    return TapHandle(experts, fn)


def scatter_rows(values: torch.Tensor, token_idx: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """``[n, N]`` rows at flat positions ``token_idx`` -> ``[batch, length, N]`` zeros elsewhere."""
    dense = values.new_zeros(batch * length, values.shape[-1])
    dense.index_copy_(0, token_idx.to(values.device), values)
    return dense.view(batch, length, values.shape[-1])
