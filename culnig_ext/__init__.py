"""culnig_ext: which neurons of an LLM carry a capability? (CULNIG, ICLR 2026), made to scale.

The public API, in the order the data flows: ``neuron_sites`` (where the neurons are), ``score`` (attribution
tables), ``ScoreTable``, selection (``culnig_ext.select``), ``NeuronSet``, ``inhibit`` and ``evaluate``.
Heavy submodules are imported on first use so that ``import culnig_ext`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "neuron_sites": "sites",
    "Site": "sites",
    "ScoreItem": "items",
    "score": "scorer",
    "item_scores": "scorer",
    "ScoreTable": "table",
    "NeuronSet": "neurons",
    "Neuron": "neurons",
    "inhibit": "inhibit",
    "evaluate": "evaluate",
    "EvalResult": "evaluate",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'culnig_ext' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
