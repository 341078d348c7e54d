"""The fused attribution ops in plain PyTorch: the fallback when the C++ extension is unavailable.

Same signatures, results and refusals (exception types and messages) as ``torch.ops.culnig.*``
(csrc/culnig.cpp). Slower and uses a temporary of the size of one chunk of samples, but needs no
compiler and runs on any device.
"""

from __future__ import annotations

import torch

_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# Samples per chunk are chosen so one chunk's float32 product stays below this many elements.
_CHUNK_ELEMENTS = 1 << 24


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def _check_device(op: str, name: str, t: torch.Tensor, act: torch.Tensor) -> None:
    if t.device != act.device:
        raise ValueError(f"{op}: {name} must be on act's device {act.device}, got {t.device}")


def check_structure(op: str, act: torch.Tensor, grad: torch.Tensor, token_mask: torch.Tensor) -> None:
    """Checks of act [B, T, N], grad [B, T, N] and token_mask [B, T] bool that need no tensor data, in the
    order of csrc/culnig.cpp. Raises TypeError (dtype) or ValueError (shape, device) naming the argument."""
    if act.dim() != 3:
        raise ValueError(f"{op}: act must be a 3-D tensor [B, T, N], got shape {_shape(act)}")
    if act.dtype not in _INPUT_DTYPES:
        raise TypeError(
            f"{op}: act dtype must be one of float32, bfloat16, float16, float64, got {_dtype_name(act.dtype)}"
        )
    _check_device(op, "grad", grad, act)
    if grad.dtype != act.dtype:
        raise TypeError(
            f"{op}: grad dtype must equal act dtype {_dtype_name(act.dtype)}, got {_dtype_name(grad.dtype)}"
        )
    if grad.shape != act.shape:
        raise ValueError(f"{op}: grad must have the same shape as act {_shape(act)}, got {_shape(grad)}")
    _check_device(op, "token_mask", token_mask, act)
    if token_mask.dtype != torch.bool:
        raise TypeError(f"{op}: token_mask must be a bool tensor, got {_dtype_name(token_mask.dtype)}")
    B, T = act.shape[0], act.shape[1]
    if token_mask.dim() != 2 or tuple(token_mask.shape) != (B, T):
        raise ValueError(f"{op}: token_mask must have shape [B, T] = [{B}, {T}], got {_shape(token_mask)}")


def check_accumulate_structure(
    acc: torch.Tensor,
    act: torch.Tensor,
    grad: torch.Tensor,
    token_mask: torch.Tensor,
    weight: torch.Tensor,
    group: torch.Tensor,
) -> None:
    """The checks of max_attribution_accumulate_ that need no tensor data (dims, dtypes, shapes, devices),
    in the order of csrc/culnig.cpp. Also used by the fake kernels in culnig_ext.ops."""
    op = "culnig.max_attribution_accumulate_"
    check_structure(op, act, grad, token_mask)
    B, N = act.shape[0], act.shape[2]
    _check_device(op, "acc", acc, act)
    if acc.dtype != torch.float64:
        raise TypeError(f"{op}: acc must be float64, got {_dtype_name(acc.dtype)}")
    if acc.dim() != 2 or acc.shape[1] != N:
        raise ValueError(f"{op}: acc must be a 2-D tensor [G, N] with N = {N}, got shape {_shape(acc)}")
    _check_device(op, "weight", weight, act)
    if weight.dtype != torch.float32:
        raise TypeError(f"{op}: weight must be float32, got {_dtype_name(weight.dtype)}")
    if weight.dim() != 1 or weight.shape[0] != B:
        raise ValueError(f"{op}: weight must have shape [B] = [{B}], got {_shape(weight)}")
    _check_device(op, "group", group, act)
    if group.dtype != torch.int64:
        raise TypeError(f"{op}: group must be int64, got {_dtype_name(group.dtype)}")
    if group.dim() != 1 or group.shape[0] != B:
        raise ValueError(f"{op}: group must have shape [B] = [{B}], got {_shape(group)}")


def _check_mask_has_tokens(op: str, token_mask: torch.Tensor) -> None:
    if token_mask.shape[0] == 0:
        return
    empty = (~token_mask.any(1)).nonzero()
    if empty.shape[0] > 0:
        b = int(empty[0, 0])
        raise ValueError(f"{op}: token_mask[{b}] has no true token: sample {b} has nothing to take a maximum over")


def _maxima(act: torch.Tensor, grad: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, N] x2, [B, T] bool -> [B, N] float32 (float64 for float64 input), in chunks of samples."""
    B, T, N = act.shape
    compute = torch.float64 if act.dtype == torch.float64 else torch.float32
    out = torch.empty((B, N), dtype=compute, device=act.device)
    step = max(1, _CHUNK_ELEMENTS // max(1, T * N))
    for b0 in range(0, B, step):
        sl = slice(b0, b0 + step)
        # Product formed in float32/float64, never rounded to the input dtype.
        prod = act[sl].to(compute) * grad[sl].to(compute)
        prod.masked_fill_(~token_mask[sl, :, None], float("-inf"))
        out[sl] = prod.amax(1)
    return out


def max_attribution(act: torch.Tensor, grad: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Per sample and neuron, the max over masked tokens of act * grad.

    act, grad: [B, T, N], float32 / bfloat16 / float16 / float64, same dtype and device.
    token_mask: [B, T] bool, at least one True per sample.
    Returns [B, N] float32 (float64 for float64 input).
    """
    op = "culnig.max_attribution"
    check_structure(op, act, grad, token_mask)
    _check_mask_has_tokens(op, token_mask)
    return _maxima(act, grad, token_mask)


def max_attribution_accumulate_(
    acc: torch.Tensor,
    act: torch.Tensor,
    grad: torch.Tensor,
    token_mask: torch.Tensor,
    weight: torch.Tensor,
    group: torch.Tensor,
    clamp_min: float | None = None,
) -> None:
    """In place: acc[group[b], n] += weight[b] * max(clamp_min, max_t act[b,t,n] * grad[b,t,n]).

    acc: [G, N] float64; act, grad: [B, T, N]; token_mask: [B, T] bool; weight: [B] float32;
    group: [B] int64 in [0, G). No clamp when clamp_min is None. acc is untouched if any check fails.
    """
    op = "culnig.max_attribution_accumulate_"
    check_accumulate_structure(acc, act, grad, token_mask, weight, group)
    B = act.shape[0]
    _check_mask_has_tokens(op, token_mask)
    if B == 0:
        return
    G = acc.shape[0]
    bad = ((group < 0) | (group >= G)).nonzero()
    if bad.shape[0] > 0:
        b = int(bad[0, 0])
        raise IndexError(f"{op}: group[{b}] = {int(group[b])} is out of range for acc with {G} rows")
    m = _maxima(act, grad, token_mask).to(torch.float64)
    if clamp_min is not None:
        m = m.clamp(min=clamp_min)
    # Everything is computed before acc is written.
    acc.index_add_(0, group, weight.to(torch.float64)[:, None] * m)
