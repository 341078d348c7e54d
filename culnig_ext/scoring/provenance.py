"""What a score table was computed from: model, its revision or weights hash, dtype, attention implementation,
package version, prompt format, control, clamp and the study recipe's scoring hash (``recipe``). Reuse (pipeline), resume (checkpoint) and merge compare these
fields; ``mismatch`` names the first that differs.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping

from torch import nn

# Compared by pipeline reuse, checkpoint resume and merge, in this order.
FIELDS = ("model", "revision", "weights_hash", "dtype", "attn_implementation", "package_version", "prompt_format",
          "control", "clamp_min", "recipe")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
FULL_HASH_LIMIT = 4 << 30  # above this many bytes of weights, hash a sample (size + 64 spread 1 MiB chunks)
_cache: dict[tuple, str] = {}


def weights_hash(path: str | os.PathLike) -> str:
    """``sha256:<16 hex>`` of a weights file or of a model folder's weight files (names, sizes and bytes).

    Up to 4 GiB the whole content is hashed; above, the size and 64 evenly spread 1 MiB chunks of each file
    (``sha256-sampled:``), so a 50 GB checkpoint costs under a second. Cached per (path, size, mtime)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stats in _cache:
        return _cache[stats]
    total = sum(s[1] for s in stats)
    sampled = total > FULL_HASH_LIMIT
    h = hashlib.sha256()
    for p, size, _ in stats:
        h.update(f"{Path(p).name}:{size}\n".encode())
        with open(p, "rb") as f:
            if not sampled:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
            else:
                for k in range(64):
                    f.seek(max(0, size - (1 << 20)) * k // 63)
                    h.update(f.read(1 << 20))
    value = f"{'sha256-sampled' if sampled else 'sha256'}:{h.hexdigest()[:16]}"
    _cache[stats] = value
    return value


def model_provenance(model: nn.Module) -> dict[str, str]:
    """The model's part of a table's provenance (strings; empty when unknown).

    ``revision`` is the hub commit when the model came from the hub; for local files (``load_model`` records them in
    ``model.culnig_weights_path``) ``weights_hash`` identifies the weights instead."""
    from culnig_ext._utils.version import __version__

    config = getattr(model, "config", None)
    name = str(getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or type(model).__name__)
    weights = getattr(model, "culnig_weights_path", None)
    dtype = getattr(model, "dtype", None)
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters()), None)
    return {
        "model": name,
        "revision": str(getattr(config, "_commit_hash", None) or ""),
        "weights_hash": weights_hash(weights) if weights and Path(weights).exists() else "",
        "dtype": str(dtype).replace("torch.", "") if dtype is not None else "",
        "attn_implementation": str(getattr(config, "_attn_implementation", None) or ""),
        "package_version": __version__,
    }


def mismatch(saved: Mapping[str, str], wanted: Mapping[str, str], fields=FIELDS) -> tuple[str, str, str] | None:
    """The first field in ``fields`` whose values differ, as ``(field, saved value, wanted value)``; None if all
    agree. A field missing on one side counts as the empty string."""
    for key in fields:
        a, b = saved.get(key, ""), wanted.get(key, "")
        if a != b:
            return key, a, b
    return None
