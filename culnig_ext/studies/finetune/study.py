"""The module study (CULNIG's "module selection for training"): fine-tune the blocks with the most culture neurons
(top), the fewest (bottom) or random ones, each from the same start, and measure the target-task gain and what the
cultural and non-cultural sets lose.

Orchestration only: ranking and picks come from ``modules``, training from ``finetune``, evaluation from
``evaluate``, intervals from ``stats.paired_bootstrap``, the page from ``finetune_report``. ``run_study`` works on a
loaded model (``culnig run --finetune`` calls it after the pipeline); ``run_finetune`` loads everything from a
``FinetuneConfig`` (``culnig finetune``).

Layout of the output folder::

    OUT/ranking.json                   every block with its count, density and parameters
    OUT/eval/{before,<end>}__<set>.json   per-item records of every evaluation
    OUT/finetune_results.json, finetune.md, finetune_layers.png   the report
"""
from __future__ import annotations

import logging

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from culnig_ext._utils.atomic import atomic_write_text
from culnig_ext.data.prompts import encode_choices
from culnig_ext._utils.names import slug
from culnig_ext.data.schema import MCItem
from culnig_ext.data.splits import sample_items
from culnig_ext.data.tasks import encode_task
from culnig_ext.intervention.evaluate import EvalResult, evaluate_encoded
from culnig_ext.studies.finetune.train import finetune, model_fingerprints
from culnig_ext.studies.finetune.report import STUDY_FORMAT, write_finetune_report
from culnig_ext.studies.finetune.blocks import decoder_param_count, layer_picks, pick_modules, rank_modules
from culnig_ext.studies.finetune.settings import StudySettings, StudyTask
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.models.sites import decoder_layers
from culnig_ext.stats.bootstrap import paired_bootstrap

log = logging.getLogger("culnig")


def _evaluate_all(model, target: tuple[list[MCItem], list, str], sets: Mapping[str, tuple[list[MCItem], list]],
                  fmt: str, s: StudySettings, save: Path, tag: str) -> tuple[EvalResult, dict[str, EvalResult]]:
    items, encodings, target_fmt = target
    tres = evaluate_encoded(model, items, encodings, format=target_fmt, batch_size=s.eval_batch_size,
                            restrict_to_choices=target_fmt == "letter", progress=s.progress)
    tres.save(save / f"{tag}__target.json")
    out = {}
    for name, (set_items, set_enc) in sets.items():
        res = evaluate_encoded(model, set_items, set_enc, format=fmt, batch_size=s.eval_batch_size,
                               progress=s.progress)
        res.save(save / f"{tag}__{slug(name)}.json")
        out[name] = res
    return tres, out


def run_study(
    model: torch.nn.Module,
    tokenizer: Any,
    neurons: NeuronSet,
    train_items: Sequence[MCItem],
    target_items: Sequence[MCItem],
    eval_sets: Mapping[str, Sequence[MCItem]],
    *,
    fmt: str,
    out_dir: str | Path,
    settings: StudySettings | None = None,
    task_name: str = "target task",
    neurons_name: str = "culture-general neurons",
    before: Mapping[str, EvalResult] | None = None,
    notes: Sequence[str] = (),
    log_fn: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Fine-tune each end from the same start and evaluate before and after; returns the results dict (also
    written with the report into ``out_dir``).

    Args:
        model, tokenizer: the start model (restored bit for bit after each end, checked).
        neurons: the set the blocks are ranked by (e.g. culture-general neurons).
        train_items, target_items: the target task's training and test items (``data.tasks.load_task``).
        eval_sets: ``{name: items}`` of the sets whose loss is measured (cultural test, CountryRC test, a
            non-cultural set), evaluated in ``fmt`` (``letter`` or ``cloze``).
        before: already computed start-model results of ``eval_sets`` (the pipeline's "original"), reused.
    """
    s = settings or StudySettings()
    s.check()
    out = Path(out_dir)
    save = out / "eval"
    t0 = time.perf_counter()
    ranking = rank_modules(model, neurons, by=s.by)
    total = decoder_param_count(model)
    atomic_write_text(out / "ranking.json", json.dumps(
        {"by": s.by, "decoder_params": total, "blocks": [b.to_dict() for b in ranking]}, indent=1) + "\n")
    picks = {end: pick_modules(ranking, s.budget, end, s.seed, total_params=total, by=s.by) for end in s.ends}

    target_items = list(target_items)
    target_enc = [encode_task(it, tokenizer) for it in target_items]
    target_fmt = "letter" if all(e.letter_ids is not None for e in target_enc) else "cloze"
    sets = {name: (list(items), [encode_choices(it, tokenizer, format=fmt) for it in items])
            for name, items in eval_sets.items()}
    start = model_fingerprints(model)

    log_fn(f"module study: evaluating the start model on {task_name} and {len(sets)} sets")
    if before is not None:
        missing = [name for name in sets if name not in before]
        if missing:
            raise ValueError(f"'before' lacks the evaluation set(s) {missing}")
        target_before = evaluate_encoded(model, target_items, target_enc, format=target_fmt,
                                         batch_size=s.eval_batch_size, restrict_to_choices=target_fmt == "letter",
                                         progress=s.progress)
        target_before.save(save / "before__target.json")
        sets_before = {name: before[name] for name in sets}
        for name, res in sets_before.items():
            res.save(save / f"before__{slug(name)}.json")
    else:
        target_before, sets_before = _evaluate_all(model, (target_items, target_enc, target_fmt), sets, fmt, s,
                                                   save, "before")
    num_layers = len(decoder_layers(model))
    ends: list[dict[str, Any]] = []
    results = {
        "format": STUDY_FORMAT,
        "model": str(getattr(model.config, "_name_or_path", "") or type(model).__name__),
        "neurons": neurons_name,
        "n_neurons": len(neurons),
        "mode": "lora" if s.lora else "full",
        "budget": s.budget,
        "by": s.by,
        "num_layers": num_layers,
        "settings": asdict(s) | {"ends": list(s.ends)},
        "target": {"name": task_name, "n_train": len(train_items), "n_items": len(target_items),
                   "format": target_fmt, "before": target_before.accuracy},
        "eval_sets": list(sets),
        "before": {n: r.accuracy for n, r in sets_before.items()},
        "ends": ends,
        "notes": list(notes) + [
            f"Cultural and non-cultural sets scored in the {fmt} format; the target task by the "
            + ("logits of its answer digits (argmax over the choices)" if target_fmt == "letter"
               else "log-likelihood of each choice") + ".",
            "Gain and drop intervals: paired bootstrap over items (stats.paired_bootstrap, "
            f"{s.n_resamples} resamples, seed {s.seed}); p-values in finetune_results.json (one-sided: gain > 0, "
            "drop > 0).",
        ],
        "metadata": {},
    }
    for end in s.ends:
        pick = picks[end]
        log_fn(f"module study, end {end!r}: {len(pick)} blocks ({pick.share:.2%} of the decoder's "
               f"parameters): {', '.join(pick.names)}")
        names = {name for b in pick for name in b.linear_names}
        params = [p for name, mod in model.named_modules() if name in names for p in mod.parameters()]
        snapshot = [p.detach().clone() for p in params]
        try:
            train = finetune(model, tokenizer, train_items, pick, lora=s.lora, epochs=s.epochs, lr=s.lr,
                             batch_size=s.batch_size, grad_accum=s.grad_accum, max_steps=s.max_steps, seed=s.seed,
                             progress=s.progress)
            t_after, sets_after = _evaluate_all(model, (target_items, target_enc, target_fmt), sets, fmt, s, save,
                                                end)
        finally:
            with torch.no_grad():
                for p, saved in zip(params, snapshot):
                    p.copy_(saved)
        changed = [name for name, digest in model_fingerprints(model).items() if start.get(name) != digest]
        if changed:
            raise RuntimeError(f"the model did not return to its start after end {end!r}: {changed[:3]}")
        log_fn(f"end {end!r}: {task_name} {target_before.accuracy:.3f} -> {t_after.accuracy:.3f}; "
               + ", ".join(f"{n} {sets_before[n].accuracy:.3f} -> {r.accuracy:.3f}" for n, r in sets_after.items()))
        ends.append({
            "end": end,
            "pick": pick.to_dict(),
            "layers": layer_picks(pick, num_layers),
            "train": train.to_dict(),
            "target_after": t_after.accuracy,
            "target_gain": paired_bootstrap(t_after.correct, target_before.correct, n_resamples=s.n_resamples,
                                            seed=s.seed, alternative="greater").to_dict(),
            "after": {n: r.accuracy for n, r in sets_after.items()},
            "drops": {n: paired_bootstrap(sets_before[n].correct, r.correct, n_resamples=s.n_resamples,
                                          seed=s.seed, alternative="greater").to_dict()
                      for n, r in sets_after.items()},
        })
        # Written after every end, so a long study leaves a usable report of the ends done so far.
        results["metadata"] = {"ends done": f"{len(ends)} of {len(s.ends)}",
                               "seconds": f"{time.perf_counter() - t0:.0f}"}
        write_finetune_report(out, results)
    return results


@dataclass
class FinetuneConfig:
    """Everything ``culnig finetune`` needs (see ``run_finetune``)."""

    neurons: str
    out: str
    model: str = "smollm2"
    task: str = StudyTask.task  # the task's options and their defaults: StudyTask (settings.py)
    task_test: str | None = StudyTask.task_test
    max_train_items: int | None = StudyTask.max_train_items
    max_test_items: int | None = 120
    data: str = "builtin:cultural"
    crc_test: str = "builtin:countryrc-test"
    general: str | None = "builtin:general"
    format: str = "auto"
    dtype: str = "float32"
    device: str | None = None
    settings: StudySettings = field(default_factory=StudySettings)


def run_finetune(cfg: FinetuneConfig, *, log_fn: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Load the model, the neuron set, the task and the evaluation sets of ``cfg`` and run ``run_study``."""
    from culnig_ext.data import load_items
    from culnig_ext.data.tasks import load_task
    from culnig_ext.models.loading import load_model
    from culnig_ext.studies.conditions import choose_format

    from types import SimpleNamespace

    from culnig_ext.studies.finetune.report import LAYERS_PNG, REPORT_FILE, RESULTS_FILE
    from culnig_ext.studies.preflight import model_options, neuron_set, output_dir

    # Checked before the model loads: settings, neuron set, model layout, output folder, then the data.
    cfg.settings.check()
    neurons = neuron_set(cfg.neurons, "--neurons")
    layout = model_options(SimpleNamespace(model=cfg.model, device=cfg.device,
                                            batch_size=cfg.settings.eval_batch_size))
    if layout is not None:
        try:
            neurons.validate(layout)
        except ValueError as exc:
            raise ValueError(f"{cfg.neurons}: {exc} (model {cfg.model})") from None
    output_dir(cfg.out, files=(RESULTS_FILE, REPORT_FILE, LAYERS_PNG, "report.html", "config.json", "ranking.json"))
    seed = cfg.settings.seed
    if cfg.task_test is None and ":" in cfg.task and not cfg.task.startswith("builtin:"):
        raise ValueError(f"task {cfg.task!r} is a local file, which is one split: give the test file with "
                         "--task-test")
    train_items = sample_items(load_task(cfg.task, "train"), cfg.max_train_items, seed)
    target = sample_items(load_task(cfg.task_test or cfg.task, "test"), cfg.max_test_items, seed)
    test_items = sample_items(load_items(cfg.data, split="test", seed=seed), cfg.max_test_items, seed)
    groups = list(dict.fromkeys(it.group for it in test_items))
    eval_sets = {"Cultural test (BLEnD-style)": test_items,
                 "CountryRC test": sample_items(load_items(cfg.crc_test, seed=seed, countries=groups),
                                           cfg.max_test_items, seed)}
    if cfg.general:
        eval_sets["General knowledge"] = sample_items(load_items(cfg.general, seed=seed), cfg.max_test_items, seed)
    log_fn(f"loading model {cfg.model!r}")
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    neurons.validate(model)
    fmt, notes = cfg.format, []
    if fmt == "auto":
        probe = load_items(cfg.data, split="neur", seed=seed)  # as the pipeline: the scoring half of the data
        fmt, why = choose_format(model, tokenizer, probe, cfg.settings.eval_batch_size, cfg.settings.progress)
        log_fn(f"{why}")
        notes.append(f"Format chosen automatically: {why}.")
    out = Path(cfg.out)
    atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")
    return run_study(model, tokenizer, neurons, train_items, target, eval_sets, fmt=fmt, out_dir=out,
                     settings=cfg.settings, task_name=cfg.task, neurons_name=str(cfg.neurons), notes=notes,
                     log_fn=log_fn)


def load_study_tasks(cfg: Any) -> tuple[list[MCItem], list[MCItem]]:
    """``culnig run --finetune``: check the study's settings and read its task (training and test items) before the
    model loads. ``cfg`` is the pipeline's ``RunConfig``."""
    from culnig_ext.data.tasks import load_task

    settings = cfg.study_settings()
    settings.check()
    if cfg.finetune_task_test is None and ":" in cfg.finetune_task and not cfg.finetune_task.startswith("builtin:"):
        raise ValueError(f"--finetune-task {cfg.finetune_task!r} is a local file, which is one split: give the test "
                         "file with --finetune-task-test")
    train_items = sample_items(load_task(cfg.finetune_task, "train"), cfg.finetune_max_train_items, settings.seed)
    target = sample_items(load_task(cfg.finetune_task_test or cfg.finetune_task, "test"), cfg.max_test_items,
                     settings.seed)
    return train_items, target


def run_finetune_step(model, tokenizer, general: NeuronSet, cfg: Any, tasks: tuple[list[MCItem], list[MCItem]],
                      eval_sets: Mapping[str, Sequence[MCItem]], fmt: str, before: Mapping[str, EvalResult], *,
                      log_fn: Callable[[str], None] = log.info) -> dict[str, Any]:
    """``culnig run --finetune``: the study on the run's culture-general neurons and evaluation sets, reusing the
    pipeline's un-inhibited results as "before", into ``RUN/finetune/``. ``tasks`` from ``load_study_tasks``."""
    train_items, target = tasks
    return run_study(model, tokenizer, general, train_items, target, eval_sets, fmt=fmt,
                     out_dir=Path(cfg.out) / "finetune", settings=cfg.study_settings(), task_name=cfg.finetune_task,
                     neurons_name="culture-general neurons of this run", before=before, log_fn=log_fn)


__all__ = ["FinetuneConfig", "StudySettings", "load_study_tasks", "run_finetune", "run_finetune_step",
           "run_study"]
