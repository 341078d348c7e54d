"""The tensor shapes of a GGUF file, read from its header alone: a GGUF model's neuron sites without loading it.

Hand-written (about 50 lines) because ``gguf.GGUFReader`` builds a memory-mapped array for every metadata field and
takes as long as loading the model (7 s for SmolLM2-135M here), while the pre-flight check needs 4 shapes per layer.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3: 64-bit counts and lengths).
"""
from __future__ import annotations

import mmap
import os
import re
import struct
from pathlib import Path

# Byte sizes of the fixed-size metadata value types (8 = string and 9 = array are read separately).
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
# llama.cpp's tensor names of the four neuron sites, per layer.
_SITES = {"ffn_gate": "mlp.gate_proj", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj"}
_BLOCK = re.compile(r"^blk\.(\d+)\.(ffn_gate|attn_q|attn_k|attn_v)\.weight$")


class GGUFHeaderError(ValueError):
    """The file is not a GGUF file of a version this reader knows, or its header is cut short."""


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` of a GGUF file, in PyTorch order (GGUF stores dimensions innermost first)."""
    path = Path(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return _parse(buf)
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise GGUFHeaderError(f"{path}: GGUF header cut short or malformed ({exc})") from None


def _parse(buf) -> dict[str, tuple[int, ...]]:
    if buf[:4] != b"GGUF":
        raise GGUFHeaderError("not a GGUF file")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        raise GGUFHeaderError(f"GGUF version {version} is not supported (2 or 3)")
    pos = 24

    def string(at: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", buf, at)
        return bytes(buf[at + 8: at + 8 + n]).decode("utf-8"), at + 8 + n

    def skip_value(kind: int, at: int) -> int:
        if kind in _SIZES:
            return at + _SIZES[kind]
        if kind == _STRING:
            (n,) = struct.unpack_from("<Q", buf, at)
            return at + 8 + n
        if kind == _ARRAY:
            inner, count = struct.unpack_from("<IQ", buf, at)
            at += 12
            if inner in _SIZES:
                return at + count * _SIZES[inner]
            for _ in range(count):
                at = skip_value(inner, at)
            return at
        raise GGUFHeaderError(f"unknown metadata value type {kind}")

    for _ in range(n_kv):
        _, pos = string(pos)
        (kind,) = struct.unpack_from("<I", buf, pos)
        pos = skip_value(kind, pos + 4)
    shapes = {}
    for _ in range(n_tensors):
        name, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        pos += 4 + 8 * n_dims + 4 + 8  # dims, then the ggml type and the data offset
        shapes[name] = tuple(int(d) for d in reversed(dims))
    return shapes


def site_widths(path: str | os.PathLike) -> dict[str, int] | None:
    """``{site name: width}`` (``layers.{i}.mlp.gate_proj`` ...) from a GGUF's tensor shapes, or None when a layer
    lacks one of the four unfused projections (fused q/k/v or gate/up models: their layout is known after loading)."""
    found: dict[int, dict[str, int]] = {}
    for name, shape in tensor_shapes(path).items():
        m = _BLOCK.match(name)
        if m and len(shape) == 2:
            found.setdefault(int(m.group(1)), {})[m.group(2)] = shape[0]
    if not found or sorted(found) != list(range(len(found))) or any(len(v) != 4 for v in found.values()):
        return None
    return {f"layers.{layer}.{_SITES[t]}": found[layer][t] for layer in sorted(found) for t in _SITES}
