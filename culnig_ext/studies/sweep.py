"""``culnig sweep``: choose the identification settings on a validation split, report them on the test split only.

The grid: normalisation (``count`` | ``prob``), control prompt (``empty`` | ``frame``), general-ability contrast
(off | on) and a threshold scale (the paper's top fractions ``t_mlp``/``t_attn`` times 1 or 2 by default). Every
setting is identified from the same score tables (the cultural scoring items, both controls, CountryRC, the
general contrast items), so the grid costs one selection and one validation evaluation per setting.

Splits, all disjoint:

- cultural scoring items (BLEnD's scoring topics): score tables only;
- held-out cultural items (BLEnD's test topics): split **by question** (all items of a (country, question) go to the
  same side) into a validation half and a test half (``validation_split``);
- the non-cultural set: a contrast third (scored, for ``contrast=on``), a validation third and a test third;
- CountryRC evaluation templates: test only.

Choice (validation only): for each setting, the relative drop ``(original - inhibited) / original`` on the cultural
validation items minus the same on the non-cultural validation items; the setting with the largest difference wins
(ties: the first in grid order). Only then are the test sets evaluated, with the chosen setting's neurons, the
original model and ``n_random`` random sets: the accuracy table, Holm, and the specificity verdict on test data. The
whole grid's validation numbers go to an appendix table. ``evaluate_items`` is the one function through which every
evaluation goes (the split-discipline test spies on it).
"""
from __future__ import annotations

import logging

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from culnig_ext.selection import culnig as select
from culnig_ext._utils.atomic import atomic_write_text
from culnig_ext.intervention.cloze_cache import evaluate_cloze_cached
from culnig_ext.data import encode, encode_choices, load_items
from culnig_ext.data.defaults import resolve as resolve_sources
from culnig_ext.data.schema import MCItem
from culnig_ext.data.splits import sample_items
from culnig_ext.intervention.evaluate import EvalResult, evaluate_encoded
from culnig_ext.intervention.inhibit import inhibit
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.reporting.report import ReportResults, write_report
from culnig_ext.stats.rows import accuracy_row, with_holm
from culnig_ext.stats.verdict import from_results as verdict_from_results
from culnig_ext.studies.config import SweepConfig  # declared with the other studies' options (torch-free)

log = logging.getLogger("culnig")

CULTURAL_VAL = "Cultural validation (BLEnD-style)"
GENERAL_VAL = "General knowledge validation"


@dataclass(frozen=True)
class Setting:
    """One point of the grid."""

    normalize: str
    control: str
    contrast: bool
    scale: float

    @property
    def name(self) -> str:
        return (f"normalize={self.normalize}, control={self.control}, contrast={'on' if self.contrast else 'off'}, "
                f"t x{self.scale:g}")


def grid(cfg: SweepConfig) -> list[Setting]:
    """Every combination of the config's options, in a fixed order."""
    return [Setting(n, c, g, s) for n in cfg.normalize for c in cfg.control for g in cfg.contrast_general
            for s in cfg.scale]


def validation_split(items: Sequence[MCItem], seed: int) -> tuple[list[MCItem], list[MCItem]]:
    """``(validation, test)``: each (group, question) goes wholly to one side, by a seeded hash (about half each).
    Items without a question id are placed by their own id."""
    val, test = [], []
    for it in items:
        key = f"{seed}\x1f{it.group}\x1f{it.question_id if it.question_id is not None else it.id}"
        (val if hashlib.sha256(key.encode()).digest()[0] % 2 == 0 else test).append(it)
    return val, test


def evaluate_items(model, tokenizer, items: Sequence[MCItem], neurons: NeuronSet | None, *, fmt: str,
                   batch_size: int, progress: bool) -> EvalResult:
    """Evaluate ``items`` with ``neurons`` inhibited (None: the original model). Every sweep evaluation goes
    through here."""
    encodings = [encode_choices(it, tokenizer, format=fmt) for it in items]

    def run():
        if fmt == "cloze":
            return evaluate_cloze_cached(model, items, encodings, batch_size=batch_size, progress=progress)
        return evaluate_encoded(model, items, encodings, format=fmt, batch_size=batch_size, progress=progress)

    if neurons is None:
        return run()
    with inhibit(model, neurons):
        return run()


def _rel_drop(original: EvalResult, ours: EvalResult) -> float:
    base = original.accuracy
    return (base - ours.accuracy) / base if base > 0 else float("nan")


@dataclass
class GridRow:
    setting: Setting
    n_neurons: int
    cultural_val: float
    general_val: float
    cultural_drop: float
    general_drop: float

    @property
    def gap(self) -> float:
        return self.cultural_drop - self.general_drop


def choose(
    settings: Sequence[Setting],
    identify: Callable[[Setting], NeuronSet],
    evaluate_val: Callable[[str, NeuronSet | None], EvalResult],
) -> tuple[Setting, list[GridRow]]:
    """The setting with the largest validation gap (module docstring) and every setting's validation row.

    ``evaluate_val(set_name, neurons)`` evaluates one of the validation sets (``CULTURAL_VAL``, ``GENERAL_VAL``);
    nothing else is evaluated here.
    """
    if not settings:
        raise ValueError("the sweep grid is empty")
    base = {name: evaluate_val(name, None) for name in (CULTURAL_VAL, GENERAL_VAL)}
    rows = []
    for setting in settings:
        ns = identify(setting)
        res = {name: evaluate_val(name, ns) for name in (CULTURAL_VAL, GENERAL_VAL)}
        rows.append(GridRow(setting, len(ns), res[CULTURAL_VAL].accuracy, res[GENERAL_VAL].accuracy,
                            _rel_drop(base[CULTURAL_VAL], res[CULTURAL_VAL]),
                            _rel_drop(base[GENERAL_VAL], res[GENERAL_VAL])))
        log.info(f"sweep {setting.name}: {len(ns)} neurons, validation gap {rows[-1].gap:+.3f}")
    best = max(range(len(rows)), key=lambda i: (rows[i].gap if rows[i].gap == rows[i].gap else float("-inf"), -i))
    return rows[best].setting, rows


def grid_markdown(rows: Sequence[GridRow], chosen: Setting, base: Mapping[str, float]) -> str:
    lines = [f"Validation accuracies (original: cultural {100 * base[CULTURAL_VAL]:.2f}, non-cultural "
             f"{100 * base[GENERAL_VAL]:.2f}); relative drop = (original - inhibited) / original; gap = cultural "
             "drop - non-cultural drop, the choice criterion. No test item was evaluated before the choice.", "",
             "| setting | neurons | cultural val acc | non-cultural val acc | cultural drop | non-cultural drop | gap "
             "| chosen |", "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        lines.append(f"| {r.setting.name} | {r.n_neurons} | {100 * r.cultural_val:.2f} | {100 * r.general_val:.2f} "
                     f"| {100 * r.cultural_drop:.1f}% | {100 * r.general_drop:.1f}% | {100 * r.gap:+.1f}% | "
                     f"{'yes' if r.setting == chosen else ''} |")
    return "\n".join(lines)



@dataclass
class SweepOutputs:
    run_dir: Path
    chosen: Setting
    grid: list[GridRow]
    report: Path
    timings: dict[str, float] = field(default_factory=dict)


def surface_items(cfg: SweepConfig, sources, neur_items: list[MCItem], groups: list[str]
                  ) -> tuple[list[MCItem], list[MCItem]]:
    """The surface (CountryRC) scoring and evaluation items: a ``transform:NAME`` of the scoring items (a recipe's
    surface set, e.g. the language study's shuffled questions) or an item source of the groups; no evaluation
    items for an empty ``crc_test``."""
    from culnig_ext.data.transforms import transform_items

    if sources.crc.startswith("transform:"):
        crc = transform_items(neur_items, sources.crc[len("transform:"):], cfg.seed)
    else:
        crc = sample_items(load_items(sources.crc, seed=cfg.seed, countries=groups), cfg.max_scoring_items, cfg.seed)
    test = sample_items(load_items(sources.crc_test, seed=cfg.seed, countries=groups), cfg.max_test_items,
                        cfg.seed) if sources.crc_test else []
    return crc, test


def run_sweep(cfg: SweepConfig) -> SweepOutputs:
    """Score once, choose a setting on validation data, evaluate it on test data, write the report."""
    from culnig_ext.models.loading import load_model
    from culnig_ext._utils.names import slug
    from culnig_ext.scoring.cache import score_cached
    from culnig_ext.studies.conditions import Condition, evaluate_conditions

    from culnig_ext.studies.preflight import check_sweep

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    check_sweep(cfg)  # options, model, output folder: before the data, the model, or any write
    run_dir = Path(cfg.out)
    sources = resolve_sources(cfg.data, cfg.crc, cfg.crc_test)
    per_q = dict(max_per_question=cfg.max_per_question)
    neur_items = sample_items(load_items(sources.data, split="neur", seed=cfg.seed, **per_q), cfg.max_scoring_items,
                         cfg.seed)
    held_out = load_items(sources.data, split="test", seed=cfg.seed, **per_q)
    val_items, test_items = validation_split(held_out, cfg.seed)
    val_items = sample_items(val_items, cfg.max_val_items, cfg.seed)
    test_items = sample_items(test_items, cfg.max_test_items, cfg.seed)
    groups = list(dict.fromkeys(it.group for it in neur_items))
    crc_items, crc_test = surface_items(cfg, sources, neur_items, groups)
    general = load_items(cfg.general, seed=cfg.seed)
    gen_contrast, gen_val, gen_test = general[0::3], general[1::3], general[2::3]
    split = {"scoring": [it.id for it in neur_items], "validation": [it.id for it in val_items],
             "test": [it.id for it in test_items], "general_contrast": [it.id for it in gen_contrast],
             "general_validation": [it.id for it in gen_val], "general_test": [it.id for it in gen_test],
             "countryrc_test": [it.id for it in crc_test]}
    log.info(f"sweep data: {sources.note or sources.data}; {len(neur_items)} scoring, {len(val_items)} "
          f"validation, {len(test_items)} test cultural items; non-cultural {len(gen_contrast)} contrast / "
          f"{len(gen_val)} validation / {len(gen_test)} test; {len(crc_test)} CountryRC test items")

    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    (run_dir / "scores").mkdir(parents=True, exist_ok=True)  # nothing is written before the data and model load
    atomic_write_text(run_dir / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")
    atomic_write_text(run_dir / "split.json", json.dumps(split, indent=1) + "\n")
    fmt = cfg.format
    opts = dict(batch_size=cfg.batch_size, progress=cfg.progress)
    t = time.perf_counter()
    scores = run_dir / "scores"
    neur = score_cached(scores / "neur.safetensors", model, encode(neur_items, tokenizer, format=fmt),
                        clamp_min=None, desc="culture items", **opts)
    ctrl = {c: score_cached(scores / f"ctrl_{c}.safetensors", model,
                            encode(neur_items, tokenizer, format=fmt, control=c), clamp_min=0.0,
                            desc=f"control items ({c})", **opts) for c in cfg.control}
    crc = score_cached(scores / "crc.safetensors", model, encode(crc_items, tokenizer, format=fmt),
                       clamp_min=None, desc="CountryRC items", **opts)
    contrast = None
    if any(cfg.contrast_general):
        contrast = score_cached(scores / "general.safetensors", model, encode(gen_contrast, tokenizer, format=fmt),
                                clamp_min=0.0, desc="general-ability contrast items", **opts)
    timings["score"] = time.perf_counter() - t

    def identify(s: Setting) -> NeuronSet:
        return select.general(neur, ctrl[s.control], crc, min(1.0, cfg.t_mlp * s.scale),
                              min(1.0, cfg.t_attn * s.scale), cfg.r_mlp, cfg.r_attn, normalize=s.normalize,
                              contrast=contrast if s.contrast else None)

    val_sets = {CULTURAL_VAL: val_items, GENERAL_VAL: gen_val}
    base_cache: dict[str, EvalResult] = {}

    def evaluate_val(name: str, neurons: NeuronSet | None) -> EvalResult:
        res = evaluate_items(model, tokenizer, val_sets[name], neurons, fmt=fmt, **opts)
        if neurons is None:
            base_cache[name] = res
        return res

    t = time.perf_counter()
    chosen, rows = choose(grid(cfg), identify, evaluate_val)
    timings["validation"] = time.perf_counter() - t
    log.info(f"sweep chose {chosen.name} on validation data; evaluating it on the test split")

    # test: only now, only the chosen setting ------------------------------------------------------------------
    t = time.perf_counter()
    neurons = identify(chosen)
    neurons.save(run_dir / "neurons" / "chosen.json")
    conditions = [Condition("original", None), Condition("chosen", neurons)]
    conditions += [Condition(f"random{i}", select.random_like(neurons, model, seed=cfg.seed + i, match="site"))
                   for i in range(cfg.n_random)]
    test_sets = {"Cultural test (BLEnD-style)": test_items, "CountryRC test": crc_test, "General knowledge": gen_test}
    test_sets = {name: items for name, items in test_sets.items() if items}
    results = {}
    for name, items in test_sets.items():
        results[name] = {c.name: evaluate_items(model, tokenizer, items, c.neurons, fmt=fmt, **opts)
                         for c in conditions}
        for c, res in results[name].items():
            res.save(run_dir / "eval" / f"{slug(name)}__{slug(c)}.json")
    rows_out = []
    cultural = {name: name != "General knowledge" for name in results}
    for name, by_cond in results.items():
        randoms = [by_cond[c.name] for c in conditions if c.name.startswith("random")]
        rows_out.append(accuracy_row(name, by_cond["original"], by_cond["chosen"], randoms,
                                     cultural=cultural[name], seed=cfg.seed))
    verdict = verdict_from_results(results, cultural, inhibited="chosen", seed=cfg.seed)
    timings["test"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    base_acc = {name: res.accuracy for name, res in base_cache.items()}
    res = ReportResults(
        title=f"CULNIG sweep: {model.config._name_or_path}",
        model=str(model.config._name_or_path),
        neuron_set=f"culture-general neurons, chosen on validation data: {chosen.name} ({fmt} format)",
        n_neurons=len(neurons),
        rows=with_holm(rows_out),
        notes=[f"Data: {sources.note or sources.data}.",
               f"Grid of {len(rows)} settings chosen on {len(val_items)} cultural and {len(gen_val)} non-cultural "
               f"validation items; the table above is on the test split only ({len(test_items)} cultural, "
               f"{len(crc_test)} CountryRC, {len(gen_test)} non-cultural items), with {cfg.n_random} random sets."],
        metadata={"format": fmt, "data": sources.data, "chosen": chosen.name, "seconds": f"{timings['total']:.0f}",
                  **{f"time_{k}": f"{v:.1f}" for k, v in timings.items()}},
        verdict=verdict.to_dict() if verdict is not None else None,
        sections=[{"title": "Appendix: the whole grid on the validation split",
                   "markdown": grid_markdown(rows, chosen, base_acc)}],
    )
    report = write_report(run_dir, res)
    return SweepOutputs(run_dir, chosen, rows, report, timings)
