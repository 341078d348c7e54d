"""Fused attribution ops: typed wrappers over ``torch.ops.culnig.*`` with a pure-PyTorch fallback.

The rest of the package calls only :func:`max_attribution_accumulate_`, :func:`max_attribution`,
:func:`token_list` (once per batch) and :func:`backend`. Importing this module loads the C++/CUDA extension (see ``culnig_ext.kernels.loader``): the
ahead-of-time module if installed, else a cached JIT build (built once, ~1 min; later imports reuse it).
If no extension can be had, a one-line warning says why and the reference ops
(``culnig_ext.kernels.reference``) are used.

Set CULNIG_FORCE_REFERENCE=1 to use the reference ops (and skip loading the extension), and
CULNIG_CPU_CAPABILITY=default|avx2|avx512 to choose the CPU kernel variant (:func:`cpu_capability`).

No host synchronisation per call: a caller that checks its batch once on the host (:func:`token_list`) and
passes the token list to every op call makes the ops read no device data on the host, so a batch's op calls
can be captured in a CUDA graph.

For tests, the two implementations are reachable explicitly:
``torch.ops.culnig.max_attribution`` / ``torch.ops.culnig.max_attribution_accumulate_`` (extension) and
``culnig_ext.kernels.reference.max_attribution`` / ``..._accumulate_`` (reference).
"""

from __future__ import annotations

import os
import warnings

import torch

from culnig_ext.kernels import loader
from culnig_ext.kernels import reference

FORCE_REFERENCE: bool = os.environ.get("CULNIG_FORCE_REFERENCE") == "1"

if FORCE_REFERENCE:
    LOAD: loader.LoadResult = loader.LoadResult("none", "CULNIG_FORCE_REFERENCE=1", False)
else:
    LOAD = loader.load()
    if LOAD.kind == "none":
        warnings.warn(
            f"culnig_ext: fused C++ ops unavailable ({LOAD.detail}); using the slower pure-PyTorch reference. "
            "Fix: install a C++ compiler (g++), then run `culnig build` (or reimport: kernels build on first use)",
            RuntimeWarning,
            stacklevel=2,
        )

EXTENSION_LOADED: bool = LOAD.kind in ("aot", "jit")


def _register_fakes() -> None:
    """Fake (meta) kernels so the ops trace under FakeTensorMode / torch.compile. They run the checks that
    need no tensor data (dims, dtypes, shapes, devices); the value checks (empty mask rows, group range)
    need data and run in the real kernels."""

    @torch.library.register_fake("culnig::max_attribution")
    def _max_attribution_fake(act, grad, token_mask, token_index=None, token_count=None) -> torch.Tensor:
        reference.check_structure("culnig.max_attribution", act, grad, token_mask)
        reference.check_list_structure("culnig.max_attribution", act, token_index, token_count)
        dtype = torch.float64 if act.dtype == torch.float64 else torch.float32
        return act.new_empty((act.shape[0], act.shape[2]), dtype=dtype)

    @torch.library.register_fake("culnig::max_attribution_accumulate_")
    def _accumulate_fake(acc, act, grad, token_mask, weight, group, clamp_min=None, token_index=None,
                         token_count=None) -> None:
        reference.check_accumulate_structure(acc, act, grad, token_mask, weight, group, token_index, token_count)


if EXTENSION_LOADED:
    _register_fakes()

# Device type -> backend name, filled lazily (the answer cannot change within a process).
_BACKENDS: dict[str, str] = {}


def backend(device: torch.device | str) -> str:
    """Which implementation runs for tensors on ``device``: "cpu-ext", "cuda-ext" or "reference"."""
    kind = torch.device(device).type
    name = _BACKENDS.get(kind)
    if name is None:
        if not EXTENSION_LOADED:
            name = "reference"
        elif kind == "cpu":
            name = "cpu-ext"
        elif kind == "cuda" and LOAD.with_cuda:
            name = "cuda-ext"
        else:
            name = "reference"
        _BACKENDS[kind] = name
    return name


def token_list(token_mask: torch.Tensor, *, check: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The compact token list of a batch, built once and passed to every op call of the batch.

    token_mask: [B, T] bool (best on the CPU: the check reads it there for free).
    Returns ``(token_index [B, T] int32, token_count [B] int32)`` on the mask's device: row b of token_index
    holds the positions of sample b's True tokens, ascending, in its first token_count[b] entries.
    With ``check`` (the default), first refuses a sample without a True token (ValueError naming it), the
    check the ops then skip. A mask on a GPU costs one device->host copy here, once per batch.
    """
    if check:
        reference.check_mask_has_tokens("culnig.token_list", token_mask.cpu())
    return reference.token_list(token_mask)


def cpu_capability() -> str:
    """The CPU kernel variant in use: "default" (scalar), "avx2" or "avx512" ("reference" without the
    extension). Chosen at load by what the CPU supports; CULNIG_CPU_CAPABILITY overrides."""
    return torch.ops.culnig.cpu_capability() if EXTENSION_LOADED else "reference"


def cpu_capabilities() -> list[str]:
    """The CPU kernel variants this machine and build can run, lowest first ([] without the extension)."""
    return list(torch.ops.culnig.cpu_capabilities()) if EXTENSION_LOADED else []


def set_cpu_capability(name: str) -> None:
    """Switch the CPU kernel variant for this process (tests, benchmarks). ValueError if it cannot run here."""
    torch.ops.culnig.set_cpu_capability(name)


def max_attribution(
    act: torch.Tensor,
    grad: torch.Tensor,
    token_mask: torch.Tensor,
    token_index: torch.Tensor | None = None,
    token_count: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per sample and neuron, the max over masked tokens of act * grad.

    act, grad: [B, T, N], float32 / bfloat16 / float16 / float64, same dtype and device; last-dim stride 1
        is read in place (column slices of a fused projection need no copy).
    token_mask: [B, T] bool, at least one True per sample.
    token_index, token_count: the batch's :func:`token_list` on act's device, optional. When given, the op
        reads it instead of the mask's values and checks no value on the host (no sync): the list was
        checked when it was built; on CUDA the kernels assert the ranges.
    Returns [B, N] float32 (float64 for float64 input); the product is formed in float32 (float64).
    Raises TypeError / ValueError naming the argument on bad input.
    """
    if backend(act.device) == "reference":
        return reference.max_attribution(act, grad, token_mask, token_index, token_count)
    return torch.ops.culnig.max_attribution(act, grad, token_mask, token_index, token_count)


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
    """In place: ``acc[group[b], n] += weight[b] * max(clamp_min, max_t act[b,t,n] * grad[b,t,n])``.

    acc: [G, N] float64, on act's device; act, grad: [B, T, N] (as in :func:`max_attribution`);
    token_mask: [B, T] bool, at least one True per sample; weight: [B] float32; group: [B] int64 in [0, G).
    No clamp when clamp_min is None. Samples sharing a group add in sample order (deterministic).
    token_index, token_count: as in :func:`max_attribution`; with them the group range is checked on the
    host only for CPU tensors (a device assert on CUDA), so the caller checks its groups once per batch.
    Raises TypeError / ValueError / IndexError naming the argument (and sample) on bad input; acc is then
    left untouched.
    """
    if backend(act.device) == "reference":
        reference.max_attribution_accumulate_(
            acc, act, grad, token_mask, weight, group, clamp_min, token_index, token_count
        )
    else:
        torch.ops.culnig.max_attribution_accumulate_(
            acc, act, grad, token_mask, weight, group, clamp_min, token_index, token_count
        )
