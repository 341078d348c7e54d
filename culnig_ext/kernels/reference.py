"""The fused attribution ops in plain PyTorch: the fallback when the C++ extension is unavailable.

Same signatures, results and refusals as ``torch.ops.culnig.*`` (csrc/culnig.cpp): both take the exception
types and words from csrc/messages.def. Slower and uses a temporary of the size of one chunk of samples, but needs no
compiler and runs on any device.
"""

from __future__ import annotations

import builtins
import re

import torch

from culnig_ext.kernels import loader

_INPUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
# Samples per chunk are chosen so one chunk's float32 product stays below this many elements.
_CHUNK_ELEMENTS = 1 << 24


def _read_messages() -> dict[str, tuple[type[Exception], str]]:
    """key -> (exception class, text with {} placeholders), from csrc/messages.def (the one source)."""
    root = loader.sources_dir()
    if root is None or not (root / "messages.def").is_file():
        raise ImportError("culnig_ext: csrc/messages.def (the ops' error messages) is missing from this installation")
    pattern = re.compile(r'^CULNIG_MESSAGE\((\w+), (\w+), "(.*)"\)$')
    found = {}
    for line in (root / "messages.def").read_text(encoding="utf-8").splitlines():
        m = pattern.match(line)
        if m:
            found[m.group(1)] = (getattr(builtins, m.group(2)), m.group(3))
    return found


MESSAGES = _read_messages()


def refuse(op: str, key: str, *args) -> Exception:
    """The exception of messages.def's ``key`` for ``op``, its {} filled with ``args`` (to be raised)."""
    exc, text = MESSAGES[key]
    return exc(f"{op}: " + text.format(*args))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def _check_device(op: str, name: str, t: torch.Tensor, act: torch.Tensor) -> None:
    if t.device != act.device:
        raise refuse(op, "device", name, act.device, t.device)


def check_structure(op: str, act: torch.Tensor, grad: torch.Tensor, token_mask: torch.Tensor) -> None:
    """Checks of act [B, T, N], grad [B, T, N] and token_mask [B, T] bool that need no tensor data, in the
    order of csrc/culnig.cpp. Raises TypeError (dtype) or ValueError (shape, device) naming the argument."""
    if act.dim() != 3:
        raise refuse(op, "act_dim", _shape(act))
    if act.dtype not in _INPUT_DTYPES:
        raise refuse(op, "act_dtype", _dtype_name(act.dtype))
    _check_device(op, "grad", grad, act)
    if grad.dtype != act.dtype:
        raise refuse(op, "grad_dtype", _dtype_name(act.dtype), _dtype_name(grad.dtype))
    if grad.shape != act.shape:
        raise refuse(op, "grad_shape", _shape(act), _shape(grad))
    _check_device(op, "token_mask", token_mask, act)
    if token_mask.dtype != torch.bool:
        raise refuse(op, "mask_dtype", _dtype_name(token_mask.dtype))
    B, T = act.shape[0], act.shape[1]
    if token_mask.dim() != 2 or tuple(token_mask.shape) != (B, T):
        raise refuse(op, "mask_shape", B, T, _shape(token_mask))


def check_list_structure(op: str, act: torch.Tensor, token_index, token_count) -> None:
    """Checks of the token list (token_index [B, T] int32, token_count [B] int32, both or neither) that need no
    tensor data."""
    if (token_index is None) != (token_count is None):
        raise refuse(op, "list_pair", "token_index" if token_index is not None else "token_count")
    if token_index is None:
        return
    B, T = act.shape[0], act.shape[1]
    _check_device(op, "token_index", token_index, act)
    if token_index.dtype != torch.int32:
        raise refuse(op, "index_dtype", _dtype_name(token_index.dtype))
    if token_index.dim() != 2 or tuple(token_index.shape) != (B, T):
        raise refuse(op, "index_shape", B, T, _shape(token_index))
    _check_device(op, "token_count", token_count, act)
    if token_count.dtype != torch.int32:
        raise refuse(op, "count_dtype", _dtype_name(token_count.dtype))
    if token_count.dim() != 1 or token_count.shape[0] != B:
        raise refuse(op, "count_shape", B, _shape(token_count))


def check_accumulate_structure(
    acc: torch.Tensor,
    act: torch.Tensor,
    grad: torch.Tensor,
    token_mask: torch.Tensor,
    weight: torch.Tensor,
    group: torch.Tensor,
    token_index: torch.Tensor | None = None,
    token_count: torch.Tensor | None = None,
) -> None:
    """The checks of max_attribution_accumulate_ that need no tensor data (dims, dtypes, shapes, devices),
    in the order of csrc/culnig.cpp. Also used by the fake kernels in culnig_ext.kernels.ops."""
    op = "culnig.max_attribution_accumulate_"
    check_structure(op, act, grad, token_mask)
    B, N = act.shape[0], act.shape[2]
    _check_device(op, "acc", acc, act)
    if acc.dtype != torch.float64:
        raise refuse(op, "acc_dtype", _dtype_name(acc.dtype))
    if acc.dim() != 2 or acc.shape[1] != N:
        raise refuse(op, "acc_shape", N, _shape(acc))
    _check_device(op, "weight", weight, act)
    if weight.dtype != torch.float32:
        raise refuse(op, "weight_dtype", _dtype_name(weight.dtype))
    if weight.dim() != 1 or weight.shape[0] != B:
        raise refuse(op, "weight_shape", B, _shape(weight))
    _check_device(op, "group", group, act)
    if group.dtype != torch.int64:
        raise refuse(op, "group_dtype", _dtype_name(group.dtype))
    if group.dim() != 1 or group.shape[0] != B:
        raise refuse(op, "group_shape", B, _shape(group))
    check_list_structure(op, act, token_index, token_count)


def check_mask_has_tokens(op: str, token_mask: torch.Tensor) -> None:
    """Every row of token_mask [B, T] bool has a True (reads the data: a device->host copy off the CPU)."""
    if token_mask.shape[0] == 0:
        return
    empty = (~token_mask.any(1)).nonzero()
    if empty.shape[0] > 0:
        b = int(empty[0, 0])
        raise refuse(op, "mask_empty_row", b, b)


def check_group_range(op: str, group: torch.Tensor, G: int) -> None:
    """0 <= group[b] < G for every b (reads the data)."""
    bad = ((group < 0) | (group >= G)).nonzero()
    if bad.shape[0] > 0:
        b = int(bad[0, 0])
        raise refuse(op, "group_range", b, int(group[b]), G)


def token_list(token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The compact token list of a batch: ``token_mask [B, T] bool`` -> ``(index [B, T] int32, count [B] int32)``.

    Row b of index holds the positions of sample b's True tokens, ascending, in its first count[b] entries (0
    after). Built with tensor ops on the mask's device, without reading the data on the host (no sync); the
    caller checks the mask once (:func:`check_mask_has_tokens`, on a host copy).
    """
    B, T = token_mask.shape
    count = token_mask.sum(1, dtype=torch.int32)
    pos = torch.arange(T, dtype=torch.int32, device=token_mask.device).expand(B, T)
    ordered = torch.where(token_mask, pos, T).sort(dim=1, stable=True).values
    index = torch.where(pos < count[:, None], ordered, 0).to(torch.int32).contiguous()
    return index, count


def _mask_of_list(token_index: torch.Tensor, token_count: torch.Tensor) -> torch.Tensor:
    """The token mask [B, T] bool that a token list stands for (tensor ops only: no sync)."""
    B, T = token_index.shape
    valid = torch.arange(T, device=token_index.device)[None, :] < token_count[:, None]
    hits = torch.zeros(B, T, dtype=torch.int32, device=token_index.device)
    return hits.scatter_add_(1, token_index.long(), valid.to(torch.int32)) > 0


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


def max_attribution(
    act: torch.Tensor,
    grad: torch.Tensor,
    token_mask: torch.Tensor,
    token_index: torch.Tensor | None = None,
    token_count: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per sample and neuron, the max over masked tokens of act * grad.

    act, grad: [B, T, N], float32 / bfloat16 / float16 / float64, same dtype and device.
    token_mask: [B, T] bool, at least one True per sample.
    token_index, token_count: optional token list of the batch (:func:`token_list`); when given it is used
        instead of the mask's values and no check reads the data (the caller validated it once per batch).
    Returns [B, N] float32 (float64 for float64 input).
    """
    op = "culnig.max_attribution"
    check_structure(op, act, grad, token_mask)
    check_list_structure(op, act, token_index, token_count)
    if token_index is None:
        check_mask_has_tokens(op, token_mask)
    else:
        token_mask = _mask_of_list(token_index, token_count)
    return _maxima(act, grad, token_mask)


def max_attribution_accumulate_(
    acc: torch.Tensor,
    act: torch.Tensor,
    grad: torch.Tensor,
    token_mask: torch.Tensor,
    weight: torch.Tensor,
    group: torch.Tensor,
    clamp_min: float | None = None,
    token_index: torch.Tensor | None = None,
    token_count: torch.Tensor | None = None,
) -> None:
    """In place: acc[group[b], n] += weight[b] * max(clamp_min, max_t act[b,t,n] * grad[b,t,n]).

    acc: [G, N] float64; act, grad: [B, T, N]; token_mask: [B, T] bool; weight: [B] float32;
    group: [B] int64 in [0, G). No clamp when clamp_min is None. token_index/token_count as in
    :func:`max_attribution` (then group is not range-checked here either: index_add_ refuses a bad one).
    acc is untouched if any check fails.
    """
    op = "culnig.max_attribution_accumulate_"
    check_accumulate_structure(acc, act, grad, token_mask, weight, group, token_index, token_count)
    B = act.shape[0]
    if token_index is None:
        check_mask_has_tokens(op, token_mask)
        if B == 0:
            return
        check_group_range(op, group, acc.shape[0])
    else:
        if B == 0:
            return
        token_mask = _mask_of_list(token_index, token_count)
    m = _maxima(act, grad, token_mask).to(torch.float64)
    if clamp_min is not None:
        m = m.clamp(min=clamp_min)
    # Everything is computed before acc is written.
    acc.index_add_(0, group, weight.to(torch.float64)[:, None] * m)
