"""What a run will do and how long it will take: the plan (stages, item counts, conditions), an estimate of its
time from a short measured warm-up, and the report's section on the study's size and power.

``plan_run(cfg, data)`` lists the stages of ``run_pipeline`` with the items each one passes through the model
(``units``: what its progress bars count) and their kind: ``score`` (one forward and one backward pass per item)
or ``eval`` (forward only). ``warm_up`` times one small scoring batch and one small evaluation batch of the run's
own items on the loaded model (``Rates``: seconds per item of each kind); ``RunPlan.estimate(rates)`` is the sum
over the stages of units x seconds per unit. The overall progress line (``studies.progress``) uses the same plan
and refines the rates as the run goes.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from culnig_ext.data import encode, encode_choices
from culnig_ext.data.schema import MCItem
from culnig_ext.intervention.cloze_cache import evaluate_cloze_cached
from culnig_ext.intervention.evaluate import evaluate_encoded
from culnig_ext.reporting.summary import duration
from culnig_ext.scoring.scorer import score
from culnig_ext.stats.rows import AccuracyRow
from culnig_ext.studies.config import FULL_SIZES, QUICK_PRESET, RunConfig
from culnig_ext.studies.options import flag_for

SCORE, EVAL, NONE = "score", "eval", "none"
WARM_UP_ITEMS = 8


@dataclass
class Stage:
    """One stage of a run: ``units`` items pass through the model (``kind``: ``score`` = forward + backward,
    ``eval`` = forward only, ``none`` = no model passes counted); ``detail`` says which."""

    key: str
    title: str
    detail: str
    units: int = 0
    kind: str = NONE


@dataclass
class Rates:
    """Seconds per item: ``score`` (forward + backward of a scoring item), ``eval`` (an evaluation item, all its
    options), as measured by ``warm_up``."""

    score: float
    eval: float

    def of(self, kind: str) -> float:
        return {SCORE: self.score, EVAL: self.eval}.get(kind, 0.0)


@dataclass
class RunPlan:
    """The stages of a run in order, its size (``quick``, ``full`` or ``as configured``), its conditions and
    evaluation sets."""

    stages: list[Stage]
    size: str
    conditions: list[str]
    eval_sets: dict[str, int]
    sizes: dict[str, Any] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)  # the preset's sizes that options changed, as flags
    test_cap: int | None = None  # the run's cap on items per evaluation set (``max_test_items``)

    def index(self, key: str) -> int:
        """The stage's position (0-based)."""
        return [s.key for s in self.stages].index(key)

    def estimate(self, rates: Rates, *, after: int = 0) -> float:
        """Estimated seconds of the stages from position ``after`` on: units x seconds per unit of their kind."""
        return sum(s.units * rates.of(s.kind) for s in self.stages[after:])

    def lines(self) -> list[str]:
        """The plan as printed at the start of a run (one line per stage)."""
        changed = f" (changed: {', '.join(self.changed)})" if self.changed else ""
        out = [f"plan: {self.size} study{changed}, {len(self.stages)} stages"]
        for k, s in enumerate(self.stages, 1):
            out.append(f"  {k}/{len(self.stages)} {s.title}: {s.detail}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def size_label(cfg: RunConfig) -> str:
    """``full`` / ``quick`` as the run resolved ``--full``, ``as configured`` when nothing resolved it (the API)."""
    return {True: "full", False: "quick"}.get(cfg.full, "as configured")


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def plan_run(cfg: RunConfig, data: Any) -> RunPlan:
    """The stages of ``run_pipeline(cfg)`` on ``data`` (a ``RunData``), with the items each passes."""
    n_neur, n_contrast = len(data.neur), len(data.general_contrast)
    if getattr(data, "recipe", None) is not None:
        surfaces = {(s.spec.label or s.spec.name): len(s.items) for s in data.surfaces}
    else:  # sets made without a recipe: the culture study's CountryRC
        surfaces = {"CountryRC": len(data.crc)}
    n_crc = sum(surfaces.values())
    eval_sets = plan_eval_sets(data)
    conditions = ["original", "ours"] + [f"random{i}" for i in range(cfg.n_random)]
    conditions += [f"paper_random{i}" for i in range(cfg.n_random_paper)]
    stages: list[Stage] = []
    if cfg.format == "auto":
        n = min(cfg.format_probe_max, n_neur)
        stages.append(Stage("format", "choose the format", f"sequential test on at most {n} scoring items "
                            "(letter format)", n, EVAL))
    scored = [f"{n_neur} cultural", f"{n_neur} control ({cfg.control})", *(f"{n} {k}" for k, n in surfaces.items())]
    if n_contrast:
        scored.append(f"{n_contrast} general-ability contrast")
    stages.append(Stage("score", "score", " + ".join(scored) + " items, forward + backward",
                        2 * n_neur + n_crc + n_contrast, SCORE))
    identify = (f"culture-general and -specific neurons; stability over {cfg.n_parts} parts, "
                f"{cfg.n_boot} bootstrap resamples")
    stages.append(Stage("identify", "identify", identify + (f"; instance view ({n_neur} items)"
                                                            if cfg.instance_view else ""),
                        n_neur if cfg.instance_view else 0, SCORE))
    per_condition = sum(eval_sets.values())
    sets = ", ".join(f"{n} {name}" for name, n in eval_sets.items())
    stages.append(Stage("evaluate", "inhibit and evaluate",
                        f"{len(conditions)} conditions (original, ours, {_count(cfg.n_random, 'random set')}"
                        + (f", {cfg.n_random_paper} pooled" if cfg.n_random_paper else "") + f") x {sets} items",
                        len(conditions) * per_condition, EVAL))
    if cfg.saq:
        stages[-1].detail += (f"; BLEnD short answers ({cfg.saq_max_per_country or 'all'} per country, English and "
                              "local, greedy generation)")
    if cfg.kinship:
        groups = len(data.groups)
        k = groups if cfg.kinship_groups is None else min(cfg.kinship_groups, groups)
        items = round(len(data.test) * k / groups) if groups else 0
        stages.append(Stage("kinship", "kinship", f"{k} of {groups} groups' specific sets x their ~{items} test "
                            "items (the original model's results reused)", k * items, EVAL))
    recipe = getattr(data, "recipe", None)
    if recipe is not None and recipe.compare_lape:
        n_sets = 2 * (1 + cfg.n_random)
        stages.append(Stage("lape", "beside LAPE", f"LAPE's activation probabilities ({n_neur} items); both methods' "
                            f"sets with {_count(cfg.n_random, 'random set')} each x {sets} items; own vs other "
                            "groups", n_sets * per_condition + n_neur, EVAL))
    stages.append(Stage("report", "report", "report.md, results.json, figures"))
    if cfg.finetune:
        stages.append(Stage("finetune", "module study", "fine-tuning on the culture-general neurons"))
    sizes = {"scoring items": n_neur, **{f"{k} scoring items": n for k, n in surfaces.items()},
             **{f"{k} items": v for k, v in eval_sets.items()},
             "random sets": cfg.n_random, "kinship groups": cfg.kinship_groups or "all",
             "stability parts": cfg.n_parts, "bootstrap resamples": cfg.n_boot}
    return RunPlan(stages, size_label(cfg), conditions, eval_sets, sizes, changed_sizes(cfg), cfg.max_test_items)


def plan_eval_sets(data: Any) -> dict[str, int]:
    """Items per evaluation set as the plan names them: the held-out target items ``cultural test`` (a study of
    countries) or ``target test``, a surface set's ``<label> test``, the first general set ``non-cultural``, any
    other by its name."""
    recipe = getattr(data, "recipe", None)
    if recipe is None:
        return {"cultural test": len(data.test), "CountryRC test": len(data.crc_test),
                **({"non-cultural": len(data.general_eval)} if data.general_eval else {})}
    labels = {s.name: s.label or s.name for s in recipe.surface}
    out: dict[str, int] = {}
    general_seen = False
    for spec, e in zip(recipe.evaluation, data.eval_sets):
        if spec.source == "target":
            name = "cultural test" if recipe.target.groups == "country" else "target test"
        elif spec.source.startswith("surface:"):
            name = f"{labels[spec.source[len('surface:'):]]} test"
        elif spec.tag == "general" and not general_seen:
            name, general_seen = "non-cultural", True
        else:
            name = e.name
        if e.items or name != "non-cultural":
            out[name] = len(e.items)
    return out


def changed_sizes(cfg: RunConfig) -> list[str]:
    """The sizes of the run's preset (``--full`` or the quick one) that options changed, as ``--flag value``."""
    if cfg.full is None:
        return []
    preset = {**FULL_SIZES, **({} if cfg.full else {k: v for k, v in QUICK_PRESET.items() if k != "full"})}
    return [f"{flag_for(RunConfig, k)} {'none' if getattr(cfg, k) is None else getattr(cfg, k)}"
            for k, v in preset.items() if getattr(cfg, k) != v]


def cpu_threads(requested: int | None, *, load: float | None, cores: int | None,
                env: Mapping[str, str]) -> tuple[int | None, str | None]:
    """The intra-op CPU threads a run sets and why (``(None, None)``: leave torch's default).

    ``requested`` wins; else ``OMP_NUM_THREADS`` in ``env`` is kept; else one thread when the 1-minute ``load``
    average is at or above ``cores``: on a busy machine torch's threads wait for each other at every operation's
    barrier while the other jobs hold the cores, and the quick study ran 6x slower with two threads than with one
    (docs/performance.md)."""
    if requested is not None:
        return requested, f"{requested} CPU thread(s) (--threads)"
    if env.get("OMP_NUM_THREADS"):
        return None, None
    if load is not None and cores and load >= cores:
        return 1, (f"the machine is busy (load average {load:.1f} on {cores} CPUs): 1 CPU thread, faster than "
                   "several on a busy machine (--threads N to choose)")
    return None, None


def warm_up(model, tokenizer, scoring: Sequence[MCItem], test: Sequence[MCItem], fmt: str, *,
            n: int = WARM_UP_ITEMS) -> Rates:
    """Seconds per item of scoring and of evaluation, timed on ``n`` of the run's own items (after one untimed
    pass of two items, which takes the first call's one-off costs)."""
    scoring, test = list(scoring[:n]), list(test[:n])
    per_score = per_eval = 0.0  # no items of a kind: nothing of it to estimate
    if scoring:
        encoded = encode(scoring, tokenizer, format=fmt)
        score(model, encoded[:2], batch_size=2, progress=False)
        t = time.perf_counter()
        score(model, encoded, batch_size=len(encoded), progress=False)
        per_score = (time.perf_counter() - t) / len(encoded)
    if test:
        encodings = [encode_choices(it, tokenizer, format=fmt) for it in test]
        t = time.perf_counter()
        if fmt == "cloze":
            evaluate_cloze_cached(model, test, encodings, batch_size=len(test), progress=False)
        else:
            evaluate_encoded(model, test, encodings, format=fmt, batch_size=len(test), progress=False)
        per_eval = (time.perf_counter() - t) / len(test)
    return Rates(per_score, per_eval)


def estimate_line(plan: RunPlan, rates: Rates, after: int) -> str:
    """The estimate printed after the warm-up: total time of the remaining stages, and the rates behind it."""
    return (f"estimated time: about {duration(plan.estimate(rates, after=after))} for stages {after + 1}-"
            f"{len(plan.stages)} (warm-up: {rates.score:.2f} s per scored item, {rates.eval:.2f} s per evaluated "
            "item)")


def size_section(plan: RunPlan, rows: Sequence[AccuracyRow]) -> str:
    """The report's "Study size and power" section: the sizes this run used and, per evaluation set, the smallest
    drop below random its test detects with 80% power (the accuracy table's MDE), beside the research size's."""
    lines = [f"This was the **{plan.size}** study" + {
        "quick": " (`culnig run` on an embedded model: sized to finish in about 10 minutes on 2 CPU cores; "
                 "`--full` runs the research size).",
        "full": " (the research size).",
    }.get(plan.size, ".") + (f" Sizes changed by options: {', '.join(f'`{c}`' for c in plan.changed)}."
                               if plan.changed else ""), "",
             "| size | this run | research size (`--full`) |", "|---|---:|---:|"]
    full = {"scoring items": FULL_SIZES["max_scoring_items"], "CountryRC scoring items": FULL_SIZES["max_scoring_items"],
            "cultural test items": FULL_SIZES["max_test_items"], "CountryRC test items": FULL_SIZES["max_test_items"],
            "non-cultural items": "all", "random sets": FULL_SIZES["n_random"], "kinship groups": "all",
            "stability parts": FULL_SIZES["n_parts"], "bootstrap resamples": FULL_SIZES["n_boot"]}
    for key, value in plan.sizes.items():
        lines.append(f"| {key} | {value} | {full.get(key, '')} |")
    with_mde = [r for r in rows if r.mde is not None]
    if not with_mde:
        return "\n".join(lines)
    lines += ["", "Power: the smallest drop below random neurons that the one-sided paired bootstrap detects with 80% "
                  "power at this size (MDE, accuracy points)."]
    research = FULL_SIZES["max_test_items"]
    if plan.size == "quick" and plan.test_cap is not None:
        lines[-1] += (f" The MDE shrinks about as 1/sqrt(items); the last column scales it to the research size's "
                      f"items (a set the cap did not cut, with fewer than {plan.test_cap} items, keeps its size), an "
                      "approximation, not a measurement.")
        lines += ["", "| evaluation set | items | MDE (80% power) | ≈ MDE at the research size |", "|---|---:|---:|---:|"]
        for r in with_mde:
            n = research if r.n_items >= plan.test_cap else r.n_items
            lines.append(f"| {r.eval_set} | {r.n_items} | {100 * r.mde:.2f} | {100 * r.mde * (r.n_items / n) ** 0.5:.2f} "
                         f"({n} items) |")
    else:
        lines += ["", "| evaluation set | items | MDE (80% power) |", "|---|---:|---:|"]
        lines += [f"| {r.eval_set} | {r.n_items} | {100 * r.mde:.2f} |" for r in with_mde]
    return "\n".join(lines)
