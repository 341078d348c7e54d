"""Lazy exports for package ``__init__`` files: a name is imported from its module on first use, so that
``import culnig_ext`` (and ``culnig --help``) does not import torch or transformers.

A hand-written helper rather than a library (``lazy_loader`` would do the same): it is twelve lines and keeps the
base install free of one more dependency.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public names map to the module (relative to the package)
    that defines them; ``exports[name] == "module:attr"`` exports ``attr`` of that module as ``name``, and
    ``"module:"`` exports the module itself."""

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(f"{package}.{module_name}")
        value = module if (":" in target and not attr) else getattr(module, attr or name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
