"""lm-evaluation-harness tasks on our loaded model, with neuron sets inhibited (``culnig evaluate --lm-eval TASKS``).

lm-eval's ``HFLM`` wraps the model object we loaded (so GGUF and embedded models work, and our inhibition hooks are
active while a condition runs); ``simple_evaluate`` runs the tasks with ``log_samples`` so that each document's
outcome is kept, which gives the paired bootstrap against random sets in the report. Tasks come from lm-eval's
registry or from YAML files in ``include_path`` (a task on a local data file runs offline). lm-eval is an optional
dependency, pinned in requirements.txt (``pip install 'culnig_ext[lmeval]'``).
"""
from __future__ import annotations

import logging

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from culnig_ext.intervention.inhibit import inhibit

log = logging.getLogger("culnig")

#: The per-document metrics read from lm-eval's samples, in order of preference.
SAMPLE_METRICS = ("acc", "exact_match", "acc_norm")


@dataclass
class LMEvalRecord:
    id: str
    correct: float


@dataclass
class LMEvalResult:
    """Per-document outcomes of one task under one condition (``records``/``correct`` as ``EvalResult``)."""

    metric: str
    records: list[LMEvalRecord] = field(default_factory=list)

    @property
    def correct(self) -> np.ndarray:
        return np.array([r.correct for r in self.records], dtype=np.float64)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise ImportError("--lm-eval needs lm-evaluation-harness: pip install 'culnig_ext[lmeval]'") from exc
    return lm_eval, HFLM, TaskManager


def task_manager(include_path: str | None = None):
    """lm-eval's task registry, with the YAML tasks under ``include_path`` added."""
    _, _, TaskManager = _lm_eval()
    return TaskManager(include_path=include_path) if include_path else TaskManager()


def check_tasks(tasks: Sequence[str], include_path: str | None = None) -> None:
    """Raise ValueError naming the tasks lm-eval does not know (before any model is loaded)."""
    manager = task_manager(include_path)
    known = set(manager.all_tasks)
    missing = [t for t in tasks if t not in known]
    if missing:
        where = f" (nor under --lm-eval-include {include_path})" if include_path else ""
        raise ValueError(f"--lm-eval: unknown lm-evaluation-harness task(s) {missing}{where}")


def _outcomes(samples: list[dict[str, Any]], task: str) -> LMEvalResult:
    if not samples:
        raise ValueError(f"lm-eval task {task!r}: no samples were logged")
    metric = next((m for m in SAMPLE_METRICS if m in samples[0]), None)
    if metric is None:
        raise ValueError(f"lm-eval task {task!r}: its samples carry none of the metrics {SAMPLE_METRICS}")
    ordered = sorted(samples, key=lambda s: s["doc_id"])
    return LMEvalResult(metric, [LMEvalRecord(str(s["doc_id"]), float(s[metric])) for s in ordered])


def run_lm_eval(model, tokenizer, tasks: Sequence[str], conditions: Sequence[Any], *, include_path: str | None = None,
                limit: int | None = None, batch_size: int = 8, seed: int = 0) -> dict[str, dict[str, LMEvalResult]]:
    """``{task: {condition: LMEvalResult}}`` for conditions with ``name`` and ``neurons`` (None: nothing
    inhibited)."""
    lm_eval, HFLM, _ = _lm_eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = task_manager(include_path)
    out: dict[str, dict[str, LMEvalResult]] = {t: {} for t in tasks}
    for cond in conditions:
        kwargs = dict(model=lm, tasks=list(tasks), task_manager=manager, limit=limit, log_samples=True,
                      random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
        if cond.neurons is None:
            res = lm_eval.simple_evaluate(**kwargs)
        else:
            with inhibit(model, cond.neurons):
                res = lm_eval.simple_evaluate(**kwargs)
        for task in tasks:
            out[task][cond.name] = _outcomes(res["samples"][task], task)
            log.info(f"lm-eval {task:<22} {cond.name:<14} {out[task][cond.name].metric} "
                  f"{out[task][cond.name].accuracy:.3f}")
    return out
