"""The whole CULNIG pipeline in one call: score -> identify -> inhibit/evaluate -> report, into a run folder.

``run_pipeline`` is a short sequence of stages, each a function with typed inputs and outputs: ``load_data``,
``load_run_model``, ``pick_format``, ``score_tables``, ``identify``, ``evaluate_run``, ``kinship_stage`` and
``report_stage``; ``sweep``, ``compare`` and the fine-tuning study compose the same lower pieces
(``scoring.cache.score_cached``, ``studies.conditions``). Around them: the plan and its time estimate
(``studies.plan``), the overall progress line (``studies.progress``) and the format test (``studies.format_probe``).

``culnig run`` is a thin wrapper over ``run_pipeline``. Layout of a run folder::

    RUN/config.json                 the resolved configuration (with the format chosen by --format auto and the
                                    test's evidence, ``format_probe``)
    RUN/scores/{neur,ctrl}_parts.safetensors   cultural/control scores by group and random part (stability.py)
    RUN/scores/{crc,general}.safetensors   score tables (reused on re-run when model and items match)
    RUN/scores/{neur,ctrl}.safetensors   the part tables added up by group
    RUN/neurons/general.json        culture-general neurons
    RUN/neurons/specific/<group>.json   culture-specific neurons per group
    RUN/summary.md                  neuron counts per layer and kind
    RUN/eval/*.json                 per-item evaluation records of every condition
    RUN/instance.json               per culture-general neuron the scoring items it scored highest on
    RUN/results.json, report.md, kinship.png, layers.png   the report (``culnig report RUN`` rebuilds it)
    RUN/report.html                 the explorer: one self-contained page (``reporting.explorer``)

Re-running into the same folder resumes: a score table whose model and dataset fingerprint match is loaded instead
of being recomputed.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from culnig_ext._utils.atomic import atomic_write_text
from culnig_ext._utils.names import slug
from culnig_ext.data import encode, encode_choices
from culnig_ext.data.countries import BLEND_COUNTRIES
from culnig_ext.data.defaults import Sources
from culnig_ext.data.schema import MCItem
from culnig_ext.intervention.evaluate import EvalResult
from culnig_ext.models.sites import neuron_sites
from culnig_ext.reporting.analysis import kinship_matrix_encoded, layer_counts, positive_share
from culnig_ext.reporting.instance import top_items, write_instance
from culnig_ext.reporting.report import ReportResults, read_results, write_report
from culnig_ext.stats.rows import with_holm
from culnig_ext.scoring.cache import score_cached
from culnig_ext.scoring.scorer import item_scores
from culnig_ext.scoring.table import ScoreTable
from culnig_ext.scoring.determinism import deterministic
from culnig_ext.selection import culnig as select
from culnig_ext.selection import stability
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.stats.verdict import Verdict
from culnig_ext.stats.verdict import from_results as verdict_from_results
from culnig_ext.studies.conditions import Condition, accuracy_rows, evaluate_conditions, saq_rows
from culnig_ext.studies.config import (
    FULL_PRESET,
    PAPER_PRESET,
    QUICK_PRESET,
    RunConfig,
    attn_implementation,
    paper_config,
    quick_config,
    run_preset,
)
from culnig_ext.studies.format_probe import FormatProbe, probe_format
from culnig_ext.studies.plan import RunPlan, cpu_threads, estimate_line, plan_run, size_section, warm_up
from culnig_ext.studies.progress import RunProgress
from culnig_ext.studies.recipes import recipe_hash, scoring_hash, scoring_hashes

log = logging.getLogger("culnig")
LogFn = Callable[[str], None]

__all__ = ["RunConfig", "RunOutputs", "run_pipeline", "paper_config", "quick_config", "run_preset", "PAPER_PRESET",
           "QUICK_PRESET", "FULL_PRESET", "RunData", "RunScores", "Identified", "Evaluation", "load_data",
           "load_run_model", "pick_format", "score_tables", "identify", "evaluate_run", "kinship_stage",
           "kinship_subset", "report_stage", "instance_view", "summary_table"]


@dataclass
class RunOutputs:
    """Where a run's results went: its folder, the answer format used, the neuron sets, the report's path, the
    report's content (``ReportResults``: rows, verdict ...), the plan it followed and the config.json it wrote."""

    run_dir: Path
    format: str
    general: NeuronSet
    specific: dict[str, NeuronSet]
    report: Path
    timings: dict[str, float] = field(default_factory=dict)
    results: ReportResults | None = None
    plan: RunPlan | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunData:
    """The items of a run, read and sampled before any model is loaded."""

    sources: Sources
    neur: list[MCItem]  # cultural scoring items
    test: list[MCItem]  # cultural test items (held-out topics)
    crc: list[MCItem]  # CountryRC scoring items
    crc_test: list[MCItem]
    general_eval: list[MCItem]  # non-cultural evaluation items
    general_contrast: list[MCItem]  # non-cultural contrast items (``contrast_general``), disjoint from the above
    groups: list[str]  # groups of the scoring items, in order of first appearance
    study_tasks: Any = None  # the module study's tasks (``finetune``)
    recipe: Any = None  # the resolved recipe (``studies.recipes``) the sets come from
    ctrl: list[MCItem] | None = None  # control items made by a transform or read from a file (else a prompt variant)
    surfaces: list[Any] = field(default_factory=list)  # every surface set (``recipes.sets.SurfaceItems``)
    eval_sets: list[Any] = field(default_factory=list)  # every evaluation set with its tag (``EvalItems``)
    test_name: str = "Cultural test (BLEnD-style)"  # the evaluation set holding ``test`` (kinship)


@dataclass
class RunScores:
    """The score tables of a run (``ScoreTable``: per site a ``[groups, neurons]`` float64 tensor)."""

    parted: dict[str, ScoreTable]  # "neur" / "ctrl" with groups labelled by random part (stability)
    neur: ScoreTable
    ctrl: ScoreTable
    crc: ScoreTable | None  # the first surface set's table (None without surface sets)
    contrast: ScoreTable | None
    surfaces: dict[str, ScoreTable] = field(default_factory=dict)  # every surface set's table, by name


@dataclass
class Identified:
    """The neurons a run identified, their stability, and the summary page's Markdown."""

    general: NeuronSet
    specific: dict[str, NeuronSet]
    stability: stability.Stability
    summary: str


@dataclass
class Evaluation:
    """Every condition on every evaluation set, the report's rows and the specificity verdict."""

    conditions: list[Condition]
    eval_sets: dict[str, list[MCItem]]
    results: dict[str, dict[str, EvalResult]]
    rows: list
    verdict: Verdict | None


def load_data(cfg: RunConfig, log_fn: LogFn = log.info) -> RunData:
    """The run's recipe resolved against its options (``recipes.resolve``), and every item set it names read and
    sampled to the configured caps (seeded; ``recipes.sets.load_sets``)."""
    from culnig_ext.studies.recipes import load_recipe, resolve
    from culnig_ext.studies.recipes.sets import load_sets

    recipe = resolve(load_recipe(cfg.recipe), cfg)
    sets = load_sets(cfg, recipe)
    first = sets.surfaces[0] if sets.surfaces else None
    general = next((e.items for e in sets.eval_sets if e.tag == "general"), [])
    study_tasks = None
    if cfg.finetune:  # the study's settings and task, read before the model like the rest
        from culnig_ext.studies.finetune.study import load_study_tasks

        study_tasks = load_study_tasks(cfg)
    log_fn(f"data: {sets.sources.note or 'as given'}")  # after the data read cleanly: an error stays the only line
    label = first.spec.label or first.spec.name if first else "surface"
    log_fn(f"data: {len(sets.neur)} scoring items, {len(sets.test)} test items, {len(first.items) if first else 0} "
           f"{label} scoring items, {len(first.test) if first else 0} {label} test items, {len(general)} "
           "non-cultural items" + "".join(f", {len(s.items)} {s.spec.label or s.spec.name} scoring items"
                                          for s in sets.surfaces[1:]))
    return RunData(sets.sources, sets.neur, sets.test, first.items if first else [], first.test if first else [],
                   general, sets.general_contrast, sets.groups, study_tasks, recipe=recipe, ctrl=sets.ctrl,
                   surfaces=sets.surfaces, eval_sets=sets.eval_sets, test_name=sets.test_name)


def load_run_model(cfg: RunConfig, log_fn: LogFn = log.info):
    """``(model, tokenizer)`` as the run's options ask (dtype, device or device map, attention)."""
    from culnig_ext.models.loading import load_model, parse_device_map

    log_fn(f"loading model {cfg.model!r}")
    return load_model(cfg.model, dtype=cfg.dtype, device=cfg.device, device_map=parse_device_map(cfg.device_map),
                      attn_implementation=attn_implementation(cfg))


def pick_format(cfg: RunConfig, model, tokenizer, data: RunData,
                log_fn: LogFn = log.info) -> tuple[str, FormatProbe | None]:
    """The answer format: ``cfg.format``, or for ``auto`` the sequential test's choice on at most
    ``cfg.format_probe_max`` scoring items (``format_probe``), with what it saw (None when the format was given)."""
    if cfg.format != "auto":
        return cfg.format, None
    probe = probe_format(model, tokenizer, data.neur, batch_size=cfg.batch_size, max_items=cfg.format_probe_max,
                         seed=cfg.seed, progress=cfg.progress)
    log_fn(probe.reason)
    return probe.format, probe


def score_tables(cfg: RunConfig, model, tokenizer, data: RunData, fmt: str, scores_dir: Path) -> RunScores:
    """Score (or reuse) the cultural, control, CountryRC and contrast tables into ``scores_dir``."""
    opts = dict(batch_size=cfg.batch_size, progress=cfg.progress, checkpoint=cfg.checkpoint,
                checkpoint_every=cfg.checkpoint_every, checkpoint_activations=cfg.checkpoint_activations)
    def provenance(role: str, control: str = "") -> dict[str, str]:
        recipe = {"recipe": scoring_hash(data.recipe, role)} if data.recipe is not None else {}
        return {"prompt_format": fmt, "control": control, **recipe}

    plain = provenance("general")
    # Cultural and control items are scored with their groups labelled by a random part: the part tables add up
    # to the ordinary ones, and halves / resamples of the parts give the stability measure at no scoring cost.
    parted = {
        "neur": score_cached(scores_dir / "neur_parts.safetensors", model,
                             stability.label_parts(encode(data.neur, tokenizer, format=fmt), cfg.n_parts, cfg.seed),
                             clamp_min=None, desc="culture items", provenance=provenance("neur"), **opts),
        "ctrl": score_cached(scores_dir / "ctrl_parts.safetensors", model,
                             stability.label_parts(control_encoded(cfg, data, tokenizer, fmt), cfg.n_parts, cfg.seed),
                             clamp_min=0.0, desc=f"control items ({cfg.control})",
                             provenance=provenance("ctrl", cfg.control), **opts),
    }
    for role, table in parted.items():
        stability.collapse(table).save(scores_dir / f"{role}.safetensors")
    surfaces = {s.spec.name: score_cached(scores_dir / f"{s.spec.name}.safetensors", model,
                                          encode(s.items, tokenizer, format=fmt), clamp_min=None,
                                          desc=f"{s.spec.label or s.spec.name} items",
                                          provenance=provenance(s.spec.name), **opts)
                for s in data.surfaces}
    crc = surfaces[data.surfaces[0].spec.name] if data.surfaces else None
    contrast = None
    if data.general_contrast:
        contrast = score_cached(scores_dir / "general.safetensors", model,
                                encode(data.general_contrast, tokenizer, format=fmt), clamp_min=0.0,
                                desc="general-ability contrast items", provenance=plain, **opts)
    return RunScores(parted, ScoreTable.load(scores_dir / "neur.safetensors"),
                     ScoreTable.load(scores_dir / "ctrl.safetensors"), crc, contrast, surfaces)


def control_encoded(cfg: RunConfig, data: RunData, tokenizer, fmt: str) -> list:
    """The control items encoded: a prompt variant of the scoring items (``empty``/``frame``), or the items a
    transform or a file made (``data.ctrl``), in the scoring items' order."""
    if data.ctrl is not None:
        return encode(data.ctrl, tokenizer, format=fmt)
    return encode(data.neur, tokenizer, format=fmt, control=cfg.control)


def identify(cfg: RunConfig, model, tokenizer, data: RunData, scores: RunScores, fmt: str, run_dir: Path,
             timings: dict[str, float], log_fn: LogFn = log.info) -> Identified:
    """Culture-general and -specific neurons (saved under ``run_dir/neurons``), their stability over the scoring
    items' parts, and the summary page (``run_dir/summary.md``, with the instance view when asked for)."""

    def general_of(tables) -> NeuronSet:
        ns = select.general(tables["neur"], tables["ctrl"], scores.crc, cfg.t_mlp, cfg.t_attn, cfg.r_mlp,
                            cfg.r_attn, normalize=cfg.normalize, contrast=scores.contrast)
        for s in data.surfaces[1:]:  # a recipe's further surface sets
            ns = select.remove_surface(ns, scores.surfaces[s.spec.name], {k: getattr(s.spec.top, k)
                                                                          for k in s.spec.kinds},
                                       normalize=cfg.normalize, role=s.spec.name)
        return ns

    general = general_of({"neur": scores.neur, "ctrl": scores.ctrl})
    general.save(run_dir / "neurons" / "general.json")
    t = time.perf_counter()
    stab = stability.measure(general_of, scores.parted, {s.name: s.width for s in neuron_sites(model)},
                             n_boot=cfg.n_boot, seed=cfg.seed)
    timings["stability"] = time.perf_counter() - t
    if stab.warning:
        log_fn(f"warning: {stab.warning}")
    specific = specific_sets(cfg, data, scores, log_fn)
    for group, ns in specific.items():
        ns.save(run_dir / "neurons" / "specific" / f"{slug(group)}.json")
    num_layers = len({s.layer for s in neuron_sites(model)})
    summary = summary_table(general, specific, num_layers)
    if cfg.instance_view and len(general):
        t = time.perf_counter()
        per_item = item_scores(model, encode(data.neur, tokenizer, format=fmt), general,
                               batch_size=cfg.batch_size, progress=cfg.progress)
        summary += instance_view(general, positive_share(per_item), len(data.neur))
        write_instance(run_dir, top_items(general, per_item, data.neur))  # the explorer's neuron cards
        timings["instance_view"] = time.perf_counter() - t
    atomic_write_text(run_dir / "summary.md", summary)
    log_fn(f"{len(general)} {study_name(data)}-general neurons; specific: "
           + ", ".join(f"{g} {len(s)}" for g, s in specific.items()))
    return Identified(general, specific, stab, summary)


def specific_sets(cfg: RunConfig, data: RunData, scores: RunScores, log_fn: LogFn = log.info) -> dict[str, NeuronSet]:
    """The group-specific neurons of every group: ``select.specific`` with the first surface set (when it filters
    specific neurons), then each further surface set that does (``select.remove_surface``)."""
    first = data.surfaces[0].spec if data.surfaces else None
    crc = scores.crc if first is not None and first.specific is not None else None
    # The paper divides every group's sums by the table's item count ("total"); with normalize="prob" each
    # group is divided by its own summed P, so groups answered with different confidence compare fairly.
    normalize = "prob" if cfg.normalize == "prob" else "total"
    out: dict[str, NeuronSet] = {}
    for group in scores.neur.groups:
        if crc is not None and group not in crc.groups:
            log_fn(f"no {first.label or first.name} items for group {group!r}: its specific neurons are not "
                   "filtered by it")
        ns = select.specific(scores.neur, scores.ctrl, crc if crc is not None and group in crc.groups else None,
                             group, cfg.t_specific, cfg.r_specific, cfg.z_min, normalize=normalize)
        for s in data.surfaces[1:]:
            table = scores.surfaces[s.spec.name]
            if s.spec.specific is not None and group in table.groups:
                ns = select.remove_surface(ns, table, {"all": s.spec.specific}, normalize=normalize, group=group,
                                           role=s.spec.name)
        out[group] = ns
    return out


def evaluate_run(cfg: RunConfig, model, tokenizer, data: RunData, general: NeuronSet, fmt: str, run_dir: Path,
                 notes: list[str], timings: dict[str, float], log_fn: LogFn = log.info) -> Evaluation:
    """Evaluate the original model, the model with ``general`` inhibited and the random sets on every set (and the
    short answers when asked for); records under ``run_dir/eval``."""
    conditions = [Condition("original", None), Condition("general", general)]
    conditions += [Condition(f"random{i}", select.random_like(general, model, seed=cfg.seed + i, match="site"))
                   for i in range(cfg.n_random)]
    conditions += [Condition(f"paper_random{i}", select.random_like(general, model, seed=cfg.seed + i, match="none"))
                   for i in range(cfg.n_random_paper)]
    eval_sets = {e.name: e.items for e in data.eval_sets if e.items}
    results = evaluate_conditions(model, tokenizer, eval_sets, conditions, fmt=fmt, batch_size=cfg.batch_size,
                                  progress=cfg.progress, save_dir=run_dir / "eval")
    rows = []
    tags = {e.name: e.tag for e in data.eval_sets}
    cultural = {name: tags[name] == "target" for name in results}
    for set_name, by_cond in results.items():
        rows += accuracy_rows(set_name, by_cond, "general", cultural=cultural[set_name], seed=cfg.seed)
    if cfg.saq:
        rows += _short_answers(cfg, model, tokenizer, data, conditions, run_dir, notes, timings, log_fn)
    rows = with_holm(rows)
    verdict = verdict_from_results(results, cultural, inhibited="general", seed=cfg.seed)
    if verdict is not None:
        log_fn(f"specificity verdict: {verdict.label}: {verdict.reason}")
    return Evaluation(conditions, eval_sets, results, rows, verdict)


def _short_answers(cfg: RunConfig, model, tokenizer, data: RunData, conditions: list[Condition], run_dir: Path,
                   notes: list[str], timings: dict[str, float], log_fn: LogFn) -> list:
    """BLEnD's short-answer questions under every condition but the paper's random sets: report rows."""
    from culnig_ext.data.saq import load_saq
    from culnig_ext.intervention.short_answers import evaluate_saq

    t_saq = time.perf_counter()
    saq_groups = [g for g in data.groups if g in BLEND_COUNTRIES]
    saq_items = load_saq(cfg.saq, countries=saq_groups, split="test", max_per_country=cfg.saq_max_per_country,
                         seed=cfg.seed)
    log_fn(f"short answers: {len(saq_items)} items ({len(saq_groups)} countries, English and local)")
    saq_results = evaluate_saq(model, tokenizer, saq_items,
                               [c for c in conditions if not c.name.startswith("paper_random")],
                               max_new_tokens=cfg.saq_max_new_tokens, batch_size=cfg.batch_size,
                               progress=cfg.progress)
    atomic_write_text(run_dir / "saq_responses.json", json.dumps(
        {c: [asdict(r) for r in res.records] for c, res in saq_results.items()}, ensure_ascii=False, indent=1))
    notes.append(f"Short answers: greedy generation, at most {cfg.saq_max_new_tokens} new tokens, scored by "
                 "lemma match against the annotators' answers (culnig_ext/data/saq.py); responses in "
                 "saq_responses.json.")
    timings["saq"] = time.perf_counter() - t_saq
    return saq_rows(saq_results, "general", seed=cfg.seed)


def kinship_subset(cfg: RunConfig, specific: dict[str, NeuronSet]) -> list[str]:
    """The groups of the kinship matrix: those with specific neurons, all of them or a seeded choice of
    ``cfg.kinship_groups`` (in their order in ``specific``)."""
    groups = [g for g, s in specific.items() if len(s)]
    if cfg.kinship_groups is None or len(groups) <= cfg.kinship_groups:
        return groups
    chosen = set(random.Random(cfg.seed).sample(groups, cfg.kinship_groups))
    return [g for g in groups if g in chosen]


def kinship_stage(cfg: RunConfig, model, tokenizer, data: RunData, specific: dict[str, NeuronSet], fmt: str,
                  original: EvalResult | None = None) -> dict[str, Any] | None:
    """The kinship matrix (rows: inhibited group's specific set; columns: accuracy drop per group) over the groups
    of ``kinship_subset``, on their test items, as the report stores it; None when kinship is off or no group has
    specific neurons. ``original``: the original model's results on ``data.test`` (reused, not evaluated again)."""
    if not cfg.kinship or not any(len(s) for s in specific.values()):
        return None
    groups = kinship_subset(cfg, specific)
    keep = [it.group in groups for it in data.test]
    items = [it for it, k in zip(data.test, keep) if k]
    if not items:
        return None
    baseline = None
    if original is not None and [r.id for r in original.records] == [it.id for it in data.test]:
        baseline = replace(original, records=[r for r, k in zip(original.records, keep) if k])
    encodings = [encode_choices(it, tokenizer, format=fmt) for it in items]
    run = kinship_matrix_encoded(model, items, encodings, {g: specific[g] for g in groups}, format=fmt,
                                 batch_size=cfg.batch_size, progress=cfg.progress, baseline=baseline)
    return {"targets": list(run.result.targets), "groups": list(run.result.groups),
            "matrix": run.result.matrix.tolist()}


def study_name(data: RunData) -> str:
    """The study's name (its recipe's; ``culture`` without one): the report's "<name>-general neurons"."""
    return data.recipe.name if data.recipe is not None else "culture"


def surface_note(cfg: RunConfig, data: RunData | None) -> str:
    """How the surface sets filtered the general neurons, for the report's method note."""
    surfaces = data.surfaces if data is not None else None
    if surfaces is None:
        return f", minus the top {cfg.r_mlp:g}/{cfg.r_attn:g} CountryRC neurons."
    if not surfaces:
        return ", without a surface filter."
    parts = [f"the top {cfg.r_mlp:g}/{cfg.r_attn:g} {surfaces[0].spec.label or surfaces[0].spec.name} neurons"]
    parts += [f"the top {s.spec.top.mlp:g}/{s.spec.top.attn:g} {s.spec.label or s.spec.name} neurons "
              f"({'/'.join(s.spec.kinds)})" for s in surfaces[1:]]
    return ", minus " + " and ".join(parts) + "."


def lape_stage(cfg: RunConfig, model, tokenizer, data: RunData, found: Identified, evaluation: Evaluation, fmt: str,
               run_dir: Path, progress: RunProgress, timings: dict[str, float]) -> list[dict[str, str]]:
    """The report section "CULNIG beside LAPE" (``studies.lape_side``) when the recipe asks for it, else none."""
    if data.recipe is None or not data.recipe.compare_lape:
        return []
    from culnig_ext.studies.lape_side import side_by_side

    t = time.perf_counter()
    with progress.stage("lape"):
        section = {"title": "CULNIG beside LAPE",
                   "markdown": side_by_side(cfg, model, tokenizer, data, found, evaluation, fmt, run_dir)}
    timings["lape_side_by_side"] = time.perf_counter() - t
    return [section]


def method_notes(cfg: RunConfig, data: RunData | None = None) -> list[str]:
    """The report's sentences on how the neurons and the random baselines were chosen, and the protocol."""
    notes = [f"Neurons: top {cfg.t_mlp:g} of MLP gate and {cfg.t_attn:g} of attention q/k/v neurons by "
             f"neur/N - ctrl/N (normalize={cfg.normalize}, control={cfg.control})" + surface_note(cfg, data),
             f"Random baselines: {cfg.n_random} sets with the same number of neurons per site (seeds "
             f"{cfg.seed}..{cfg.seed + cfg.n_random - 1}); p: paired bootstrap over items, one-sided."]
    if cfg.n_random_paper:
        from culnig_ext.data.protocols import paper_random_note

        notes.append(paper_random_note(cfg.n_random_paper, cfg.seed) + " Drawn with torch's generator, so the sets "
                     "differ from the paper's Python-random draws; the distribution they come from is the same.")
    if cfg.kinship and cfg.kinship_groups is not None:
        notes.append(f"Kinship: over at most {cfg.kinship_groups} groups (a seeded choice, seed {cfg.seed}, among "
                     "the groups with culture-specific neurons), on their test items; the original model's results "
                     "reused.")
    if cfg.protocol == "paper":
        notes.append("Protocol: the paper's (ynklab/CULNIG): CountryRC over its 8 countries x 4 instruction variants "
                     "(scored on the first half of the templates, evaluated on all of them, as its eval script does), "
                     "accuracy averaged over the variants, letter/number answer labels, "
                     f"dtype {cfg.dtype}, attention {attn_implementation(cfg)}.")
    return notes


def report_stage(cfg: RunConfig, model, data: RunData, fmt: str, found: Identified, evaluation: Evaluation,
                 kin: dict[str, Any] | None, notes: list[str], timings: dict[str, float], run_dir: Path,
                 plan: RunPlan | None = None, probe: FormatProbe | None = None,
                 extra: list[dict[str, str]] | None = None) -> tuple[Path, ReportResults]:
    """Write the report (``results.json``, ``report.md``, its figures and ``report.html``) into ``run_dir``; returns
    its path and its content. ``plan``: adds the study's size and power; ``probe``: the format test's evidence;
    ``extra``: further sections (title, markdown), e.g. CULNIG beside LAPE."""
    num_layers = len({s.layer for s in neuron_sites(model)})
    sections = [{"title": f"Stability of the {study_name(data)}-general neurons",
                 "markdown": found.stability.to_markdown()}, *(extra or [])]
    if plan is not None:
        sections.insert(0, {"title": "Study size and power", "markdown": size_section(plan, evaluation.rows)})
    evidence = {}
    if probe is not None:
        evidence = {"format_probe": f"{probe.hits}/{probe.items} letter-format items right vs chance "
                                    f"{probe.chance:.1%}; stopped {probe.stopped} (log-likelihood ratio "
                                    f"{probe.llr:.2f}, bounds {probe.lower:.2f} / {probe.upper:.2f})"}
    results = ReportResults(
        title=f"CULNIG run: {model.config._name_or_path}",
        model=str(model.config._name_or_path),
        neuron_set=f"{study_name(data)}-general neurons ({fmt} format)",
        n_neurons=len(found.general),
        rows=evaluation.rows,
        kinship=kin,
        layers={"num_layers": num_layers, "counts": layer_counts(found.general, num_layers)},
        notes=notes,
        verdict=evaluation.verdict.to_dict() if evaluation.verdict is not None else None,
        sections=sections,
        metadata={"protocol": cfg.protocol, "study size": plan.size if plan is not None else "as configured",
                  "format": fmt, **evidence, "data": data.sources.data,
                  **({"recipe": f"{data.recipe.name} ({recipe_hash(data.recipe)})"} if data.recipe else {}),
                  "seconds": f"{timings['total']:.0f}", **{f"time_{k}": f"{v:.1f}" for k, v in timings.items()}},
    )
    path = write_report(run_dir, results)
    return path, read_results(run_dir)


def instance_view(general: NeuronSet, shares: torch.Tensor, n_items: int, top: int = 15) -> str:
    """Markdown: on what share of the scoring items each culture-general neuron's item score is positive
    (``shares[k]`` for the k-th neuron of ``general``, from ``scorer.item_scores`` and ``analysis.positive_share``)."""
    if len(general) == 0:
        return ""
    lines = ["", "## Instance view", "",
             f"Share of the {n_items} scoring items on which a culture-general neuron's item score "
             f"(max over tokens of a * dP/da) is positive: mean {shares.mean().item():.1%}, "
             f"median {shares.median().item():.1%}, min {shares.min().item():.1%}, max {shares.max().item():.1%}.",
             "", f"Top {min(top, len(general))} neurons by score:", "",
             "| neuron | score | share of items positive |", "|---|---:|---:|"]
    order = sorted(range(len(general)), key=lambda k: -general[k].score)[:top]
    for k in order:
        n = general[k]
        lines.append(f"| {n.site}[{n.index}] | {n.score:.4g} | {shares[k].item():.1%} |")
    return "\n".join(lines) + "\n"


def summary_table(general: NeuronSet, specific: dict[str, NeuronSet], num_layers: int) -> str:
    """Markdown: neuron counts per layer and kind for the general set, and per group for the specific sets."""
    counts = layer_counts(general, num_layers)
    lines = ["# Neuron counts", "", f"Culture-general neurons: {len(general)}", "",
             "| layer | MLP gate | attention q/k/v |", "|---:|---:|---:|"]
    for layer in range(num_layers):
        lines.append(f"| {layer} | {counts['mlp'][layer]} | {counts['attn'][layer]} |")
    lines.append(f"| all | {sum(counts['mlp'])} | {sum(counts['attn'])} |")
    if specific:
        lines += ["", "Culture-specific neurons per group:", "", "| group | MLP gate | attention q/k/v | total |",
                  "|---|---:|---:|---:|"]
        for group, ns in specific.items():
            by_kind = ns.counts_by_kind()
            lines.append(f"| {group} | {by_kind.get('mlp', 0)} | {by_kind.get('attn', 0)} | {len(ns)} |")
    return "\n".join(lines) + "\n"


def write_config(cfg: RunConfig, run_dir: Path, fmt: str | None = None, probe: FormatProbe | None = None,
                 recipe: Any = None) -> dict[str, Any]:
    """``run_dir/config.json``: the options, with the format the run used (once known), the format test's
    evidence and the resolved recipe's hashes (``RunConfig.RECORDS``; ``--config`` skips them); returns what it
    wrote."""
    config = asdict(cfg)
    if recipe is not None:
        config["recipe_hash"] = recipe_hash(recipe)
        config["recipe_scoring_hash"] = scoring_hashes(recipe)
    if fmt is not None:
        config["format"] = fmt
    if probe is not None:
        config["format_probe"] = probe.to_dict()
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2) + "\n")
    return config


def run_pipeline(cfg: RunConfig, *, log_fn: LogFn = log.info) -> RunOutputs:
    """Run the whole pipeline into ``cfg.out`` (see the module docstring); returns where everything went.

    With ``cfg.progress`` it also says what it will do (the plan, then an estimate of the time from a short
    warm-up) and draws the overall progress line on a terminal (``studies.progress``)."""
    from culnig_ext.studies.preflight import check_run

    t0 = time.perf_counter()
    run_dir = Path(cfg.out)
    check_run(cfg)  # options, model, run folder, reused tables: before the data, the model, or any write
    say: LogFn = log_fn if cfg.progress else (lambda _line: None)
    before_threads = torch.get_num_threads()
    try:
        with deterministic(getattr(cfg, "deterministic", False)):
            return _run(cfg, run_dir, t0, say, log_fn)
    finally:
        torch.set_num_threads(before_threads)


def _run(cfg: RunConfig, run_dir: Path, t0: float, say: LogFn, log_fn: LogFn) -> RunOutputs:
    """``run_pipeline``'s stages, once the options are checked and the threads set."""
    timings: dict[str, float] = {}

    data = load_data(cfg, log_fn)
    threads, why_threads = cpu_threads(cfg.threads, load=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                                       cores=os.cpu_count(), env=os.environ)
    if threads is not None:  # said on stderr only: the report stays the same on a busy and an idle machine
        torch.set_num_threads(threads)
        log_fn(why_threads)
    plan = plan_run(cfg, data)
    for line in plan.lines():
        say(line)
    (run_dir / "scores").mkdir(parents=True, exist_ok=True)
    config = write_config(cfg, run_dir, recipe=data.recipe)

    model, tokenizer = load_run_model(cfg, log_fn)
    timings["load"] = time.perf_counter() - t0
    notes: list[str] = [f"Data: {data.sources.note}."] if data.sources.note else []
    with RunProgress(plan, enabled=cfg.progress) as progress:
        probe = None
        if cfg.format == "auto":
            t = time.perf_counter()
            with progress.stage("format"):
                fmt, probe = pick_format(cfg, model, tokenizer, data, log_fn)
            timings["format"] = time.perf_counter() - t
            notes.append(f"Format chosen automatically: {probe.reason}.")
            config = write_config(cfg, run_dir, fmt, probe, data.recipe)
        else:
            fmt = cfg.format
        if cfg.progress:
            t = time.perf_counter()
            progress.rates = warm_up(model, tokenizer, data.neur, data.test, fmt)
            timings["warm_up"] = time.perf_counter() - t
            say(estimate_line(plan, progress.rates, after=plan.index("score")))

        t = time.perf_counter()
        with progress.stage("score"):
            scores = score_tables(cfg, model, tokenizer, data, fmt, run_dir / "scores")
        timings["score"] = time.perf_counter() - t

        with progress.stage("identify"):
            found = identify(cfg, model, tokenizer, data, scores, fmt, run_dir, timings, log_fn)

        t = time.perf_counter()
        with progress.stage("evaluate"):
            evaluation = evaluate_run(cfg, model, tokenizer, data, found.general, fmt, run_dir, notes, timings,
                                      log_fn)
        timings["evaluate"] = time.perf_counter() - t

        kin = None
        if cfg.kinship:
            t = time.perf_counter()
            with progress.stage("kinship"):
                original = evaluation.results.get(data.test_name, {}).get("original")
                kin = kinship_stage(cfg, model, tokenizer, data, found.specific, fmt, original)
            if kin is not None:
                timings["kinship"] = time.perf_counter() - t

        extra = lape_stage(cfg, model, tokenizer, data, found, evaluation, fmt, run_dir, progress, timings)
        notes += method_notes(cfg, data)
        with progress.stage("report"):
            timings["total"] = time.perf_counter() - t0
            report, results = report_stage(cfg, model, data, fmt, found, evaluation, kin, notes, timings, run_dir,
                                           plan, probe, extra)
        if cfg.finetune:
            from culnig_ext.studies.finetune.study import run_finetune_step

            t = time.perf_counter()
            with progress.stage("finetune"):
                before = {name: by_cond["original"] for name, by_cond in evaluation.results.items()}
                run_finetune_step(model, tokenizer, found.general, cfg, data.study_tasks, evaluation.eval_sets, fmt,
                                  before, log_fn=log_fn)
            timings["finetune"] = time.perf_counter() - t
            timings["total"] = time.perf_counter() - t0
    return RunOutputs(run_dir, fmt, found.general, found.specific, report, timings, results, plan, config)
