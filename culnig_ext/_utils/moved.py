"""Old module paths (``culnig_ext.scorer``, ``culnig_ext.select``, ...) from before the package was laid out by
stage keep working for one release: importing one gives the module at its new path, with one ``FutureWarning``
naming the new path. ``culnig_ext.inhibit`` and ``culnig_ext.evaluate`` are not aliased: those names are the public
functions (their modules moved to ``culnig_ext.intervention``); the README's changelog lists every move.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

#: old module (under ``culnig_ext.``) -> new module (under ``culnig_ext.``)
MOVED: dict[str, str] = {
    "atomic": "_utils.atomic", "textfile": "_utils.textfile", "logs": "_utils.logs", "interrupt": "_utils.interrupt",
    "_build": "kernels.loader", "build": "kernels.build", "ops": "kernels.ops", "ops_reference": "kernels.reference",
    "gguf_header": "models.gguf_header", "sites": "models.sites", "moe": "models.moe",
    "wrapped": "models.wrapped", "checkpointing": "models.checkpointing",
    "items": "data.items", "streaming": "data.streaming", "batching": "data.batching",
    "model_inputs": "data.model_inputs", "frames": "data.frames",
    "scorer": "scoring.scorer", "checkpoint": "scoring.resume", "distributed": "scoring.distributed",
    "table": "scoring.table", "provenance": "scoring.provenance",
    "select": "selection.culnig", "neurons": "selection.neurons", "stability": "selection.stability",
    "lape": "selection.lape",
    "cloze_cache": "intervention.cloze_cache", "saq_eval": "intervention.short_answers",
    "lmeval": "intervention.lmeval",
    "power": "stats.power", "verdict": "stats.verdict",
    "report": "reporting.report", "analysis": "reporting.analysis",
    "pipeline": "studies.pipeline", "options": "studies.options", "preflight": "studies.preflight",
    "sweep": "studies.sweep", "compare": "studies.compare", "overlap": "studies.overlap",
    "modules": "studies.finetune.blocks", "finetune": "studies.finetune.train",
    "finetune_study": "studies.finetune.study", "finetune_report": "studies.finetune.report",
}
# ``culnig_ext.models`` and ``culnig_ext.stats`` were modules and are now packages that export the same names.

_warned: set[str] = set()


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``culnig_ext.<old>`` and loads it as the module at its new path (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, old = fullname.partition(".")
        if head != "culnig_ext" or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        old = spec.name.partition(".")[2]
        new = f"culnig_ext.{MOVED[old]}"
        if old not in _warned:
            _warned.add(old)
            warnings.warn(f"{spec.name} has moved to {new}; the old path works for this release only",
                          FutureWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        """Nothing to run: the module at the new path is already loaded."""


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
