"""culnig_ext: which neurons of an LLM carry a capability? (CULNIG, ICLR 2026), made to scale.

The public API, in the order the data flows: ``load_items`` / ``load_model`` (items and model), ``neuron_sites``
(where the neurons are), ``score`` (attribution tables), ``ScoreTable``, selection (``culnig_ext.select``),
``NeuronSet``, ``inhibit`` and ``evaluate``, and the whole study: ``run_pipeline`` with its ``RunConfig``.
Names are imported on first use so that ``import culnig_ext`` stays cheap; the package is laid out by stage
(``data``, ``models``, ``kernels``, ``scoring``, ``selection``, ``intervention``, ``stats``, ``reporting``,
``studies``, ``cli``; see the README's Layout).
"""
from __future__ import annotations

from culnig_ext._utils import moved as _moved
from culnig_ext._utils.lazy import lazy_exports as _lazy_exports
from culnig_ext._utils.version import __version__

_EXPORTS = {
    "load_items": "data.sources:load_items",
    "load_model": "models.loading:load_model",
    "neuron_sites": "models.sites:neuron_sites",
    "Site": "models.sites:Site",
    "ScoreItem": "data.items:ScoreItem",
    "score": "scoring.scorer:score",
    "item_scores": "scoring.scorer:item_scores",
    "ScoreTable": "scoring.table:ScoreTable",
    "select": "selection.culnig:",
    "NeuronSet": "selection.neurons:NeuronSet",
    "Neuron": "selection.neurons:Neuron",
    "inhibit": "intervention.inhibit:inhibit",
    "evaluate": "intervention.evaluate:evaluate",
    "EvalResult": "intervention.evaluate:EvalResult",
    "run_pipeline": "studies.pipeline:run_pipeline",
    "RunConfig": "studies.pipeline:RunConfig",
}

__all__ = sorted(_EXPORTS) + ["__version__"]
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
_moved.install()
