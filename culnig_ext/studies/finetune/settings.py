"""The module study's options, declared once: ``StudySettings`` (how each end is picked and trained) and
``StudyTask`` (the target task), their defaults (the paper's) and help texts.

From these fields come ``culnig finetune``'s flags (``--end``, ``--budget``, ...: ``culnig_ext.cli.finetune``) and
``culnig run``'s ``--finetune-*`` options (``RunConfig``'s ``finetune_<name>`` fields take their default and help
from ``finetune_option(name)``; ``RunConfig.study_settings`` maps them back by name with ``settings_from``). An
option's name is its ``culnig finetune`` flag without the dashes (``end``, ``train_batch_size``).

No torch here: the CLI reads these to build its parser.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from culnig_ext.studies.options import flag_of, option, option_fields, option_meta

ENDS = ("top", "bottom", "random")
BY = ("count", "density")

# The paper's training setup (CULNIG's train/config.yaml): constant AdamW lr, batch size, gradient accumulation.
PAPER_LR = 3e-5
PAPER_BATCH_SIZE = 4
PAPER_GRAD_ACCUM = 4


@dataclass
class StudySettings:
    """How each end is picked and trained (defaults: the paper's). The fields with ``option`` metadata are the
    study's options (``culnig finetune --end ...``, ``culnig run --finetune-end ...``); the others come from the
    command's own options (``--seed``, ``--batch-size``, ``--no-progress``)."""

    ends: tuple[str, ...] = option(ENDS, "the study's ends to train, each from the same start", flag="--end",
                                   choices=ENDS)
    budget: float = option(0.10, "share of the decoder layers' parameters to train (the paper's)")
    by: str = option("count", "rank blocks by neuron count (paper) or count per neuron of the block", choices=BY)
    lora: bool = option(False, "LoRA (r=32, alpha=64) on the picked modules instead of full training")
    epochs: int = option(1, "training epochs")
    lr: float = option(PAPER_LR, "constant AdamW learning rate (the paper's)")
    batch_size: int = option(PAPER_BATCH_SIZE, "training items per forward/backward", flag="--train-batch-size")
    grad_accum: int = option(PAPER_GRAD_ACCUM, "batches per optimizer step")
    max_steps: int | None = option(None, "stop after this many optimizer steps", none="the epochs")
    seed: int = 0
    eval_batch_size: int = 16
    n_resamples: int = 10000
    progress: bool = True

    def check(self) -> None:
        """Refuse bad settings (naming the option) before anything is loaded."""
        if not self.ends or any(e not in ENDS for e in self.ends) or len(set(self.ends)) != len(self.ends):
            raise ValueError(f"--end must be distinct values of {ENDS}, got {self.ends!r}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)) or not 0 < self.budget <= 1:
            raise ValueError(f"--budget must be a share of the decoder's parameters in (0, 1], got {self.budget!r}")
        if self.by not in BY:
            raise ValueError(f"--by must be one of {BY}, got {self.by!r}")
        from culnig_ext.studies.preflight import positive_int

        for flag, name in (("--epochs", "epochs"), ("--train-batch-size", "batch_size"),
                           ("--grad-accum", "grad_accum"), ("--batch-size", "eval_batch_size"),
                           ("n_resamples", "n_resamples")):
            positive_int(flag, getattr(self, name))
        if self.max_steps is not None:
            positive_int("--max-steps", self.max_steps)
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr must be a positive number, got {self.lr!r}")


@dataclass
class StudyTask:
    """The study's target task (``FinetuneConfig``'s ``task``, ``task_test``, ``max_train_items``)."""

    task: str = option("builtin:qnli", "target task: builtin:qnli, qnli, mrpc (hub), qnli:PATH, mrpc:PATH")
    task_test: str | None = option(None, "target task's test items",
                                   none="the task's test split; needed for a local file")
    max_train_items: int | None = option(None, "seeded sample of the training items", none="all")


#: The study's options in the order their flags are listed (``culnig finetune --help``; ``RunConfig`` lists its
#: ``finetune_*`` fields in the same order): the task's options sit after ``by``, the sample size last.
OPTION_ORDER = ("end", "budget", "by", "task", "task_test", "lora", "epochs", "lr", "train_batch_size",
                "grad_accum", "max_steps", "max_train_items")


def option_name(f: dataclasses.Field) -> str:
    """A study option's name: its ``culnig finetune`` flag without the dashes (``--train-batch-size`` ->
    ``train_batch_size``); ``culnig run``'s field is ``finetune_<name>``."""
    return flag_of(f).lstrip("-").replace("-", "_")


def study_options() -> list[tuple[dataclasses.Field, type, bool]]:
    """Every study option (field, type, takes None) of ``StudySettings`` and ``StudyTask``, in ``OPTION_ORDER``."""
    found = {option_name(f): (f, kind, optional)
             for cls in (StudySettings, StudyTask) for f, kind, optional in option_fields(cls)}
    if set(found) != set(OPTION_ORDER):
        raise RuntimeError(f"OPTION_ORDER {OPTION_ORDER} does not list the study's options {sorted(found)}")
    return [found[name] for name in OPTION_ORDER]


def _study_option(name: str) -> dataclasses.Field:
    for f, _, _ in study_options():
        if option_name(f) == name:
            return f
    raise KeyError(f"no study option {name!r}; known: {', '.join(OPTION_ORDER)}")


def finetune_option(name: str) -> Any:
    """``RunConfig``'s ``finetune_<name>`` field: the study option ``name`` with its default and help. A list
    option (``end``) is one comma-separated string there (``top,bottom,random``), checked by ``StudySettings``."""
    f = _study_option(name)
    meta = option_meta(f)
    if isinstance(f.default, tuple):
        return option(",".join(f.default), meta["help"], none=meta["none"])
    return option(f.default, meta["help"], choices=meta["choices"], none=meta["none"])


def _value(f: dataclasses.Field, value: Any) -> Any:
    if not isinstance(f.default, tuple):
        return value
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(value)


def settings_from(source: Any, prefix: str = "", **extra: Any) -> StudySettings:
    """``StudySettings`` from the study options found on ``source`` as ``<prefix><name>`` (``culnig finetune``'s
    namespace: no prefix; ``RunConfig``: ``finetune_``), and ``extra`` for the other fields (seed, ...)."""
    values = {f.name: _value(f, getattr(source, prefix + option_name(f))) for f, _, _ in option_fields(StudySettings)}
    return StudySettings(**values, **extra)


def task_from(source: Any, prefix: str = "") -> dict[str, Any]:
    """The task options found on ``source`` as ``<prefix><name>``, by ``StudyTask``'s field names."""
    return {f.name: getattr(source, prefix + option_name(f)) for f, _, _ in option_fields(StudyTask)}


__all__ = ["BY", "ENDS", "OPTION_ORDER", "PAPER_BATCH_SIZE", "PAPER_GRAD_ACCUM", "PAPER_LR", "StudySettings",
           "StudyTask", "finetune_option", "option_name", "settings_from", "study_options", "task_from"]
