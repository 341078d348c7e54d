"""The whole CULNIG pipeline in one call: score -> identify -> inhibit/evaluate -> report, into a run folder.

``culnig run`` is a thin wrapper over ``run_pipeline``. Layout of a run folder::

    RUN/config.json                 the resolved configuration
    RUN/scores/{neur,ctrl}_parts.safetensors   cultural/control scores by group and random part (stability.py)
    RUN/scores/{crc,general}.safetensors   score tables (reused on re-run when model and items match)
    RUN/scores/{neur,ctrl}.safetensors   the part tables added up by group
    RUN/neurons/general.json        culture-general neurons
    RUN/neurons/specific/<group>.json   culture-specific neurons per group
    RUN/summary.md                  neuron counts per layer and kind
    RUN/eval/*.json                 per-item evaluation records of every condition
    RUN/results.json, report.md, kinship.png, layers.png   the report (``culnig report RUN`` rebuilds it)

Re-running into the same folder resumes: a score table whose model and dataset fingerprint match is loaded instead
of being recomputed.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from scipy.stats import binomtest

from . import select, stability
from .analysis import kinship_matrix_encoded, layer_counts, positive_share
from .atomic import atomic_write_text, partial_dir, publish_dir
from .data import TokenizerError, encode, encode_choices, load_items, split_items
from .data.countries import BLEND_COUNTRIES
from .cloze_cache import evaluate_cloze_cached
from .data.defaults import resolve as resolve_sources
from .data.schema import MCItem
from .evaluate import EvalResult, evaluate_encoded
from .inhibit import inhibit
from .neurons import NeuronSet
from .options import option
from .report import ReportResults, accuracy_row, with_holm, write_report
from .verdict import from_results as verdict_from_results
from .scorer import dataset_fingerprint, item_scores, score
from .sites import neuron_sites
from .table import ScoreTable

log = logging.getLogger("culnig")


@dataclass
class RunConfig:
    """Everything ``run_pipeline`` needs; every fraction and threshold defaults to the paper's value.

    Attributes:
        model: embedded alias (``smollm2``), GGUF file, local folder or hub id.
        data: cultural item source (``culnig_ext.data.load_items``); split by topic into scoring/test halves.
            ``auto``: BLEnD rebuilt from raw annotations when found, else the builtin set (``data.defaults``).
        crc, crc_test: CountryRC sources for scoring (neurons that fire on country names) and for evaluation
            (``auto``: the real templates beside the BLEnD folder, else the builtin ones).
        general: a non-cultural set evaluated beside the cultural ones (specificity); None to skip.
        format: ``letter``, ``cloze`` or ``auto`` (letter when the model answers letters above chance, else cloze).
        control: the control prompt: ``empty`` (question removed, the paper's) or ``frame`` (keeps the question frame).
        normalize: ``count`` (paper: divide by item counts) or ``prob`` (divide by summed P, see ScoreTable).
        contrast_general: also subtract a general-ability table (half of ``general``; the other half is evaluated).
        n_random: random neuron sets (same count per site) to compare against.
        max_test_items: cap per evaluation set (seeded sample) to bound the run time; None = all.
        max_scoring_items: cap on the cultural (and CountryRC) scoring items (seeded sample); None = all.
        max_per_question: items per (country, question) kept before sampling (1: independent test items).
        n_parts, n_boot: stability (``stability.py``): random parts of the scoring items (two halves of them are
            compared) and bootstrap resamples of the parts; n_boot=0 keeps only the split-half comparison.
        checkpoint_activations: recompute each decoder layer in the backward pass of scoring (long inputs).
        protocol: ``ours`` or ``paper`` (``paper_config``: the paper's prompts, CountryRC items, dtype and random
            baseline; see ``culnig_ext.data.protocols``). Stated in every report.
        saq: a BLEnD folder: also evaluate its short-answer questions (English and local language, held-out topics)
            by greedy generation, ``saq_max_per_country`` questions per country, ``saq_max_new_tokens`` tokens.
        n_random_paper: random sets drawn the paper's way (uniform over all gate and q/k/v neurons pooled), shown
            beside ours (``n_random``, same count per site); 0 = none.
    """

    # One definition: each field is also ``culnig run``'s flag (``--name-with-dashes``) and a key of ``--config``
    # files and of the config.json a run writes (culnig_ext.options). A new option is a new field here.
    out: str = option("culnig_runs/default", "run folder; re-running into it resumes")
    model: str = option("smollm2", "embedded alias (smollm2, gemma3-270m), a .gguf file, a model folder or a hub id")
    data: str = option("auto", "cultural item source (auto = BLEnD rebuilt from its raw annotations when a copy is "
                       "found, e.g. $CULNIG_BLEND_DIR or ../shared/data/blend, else builtin:cultural)")
    crc: str = option("auto", "CountryRC scoring templates (auto = the real templates 0-24 when found)")
    crc_test: str = option("auto", "CountryRC evaluation templates (auto = the real templates 25-49 when found)")
    general: str | None = option("builtin:general", "non-cultural set evaluated for specificity ('' or none to skip)")
    format: str = option("auto", "letter: the next token is the option letter; cloze: the option's text scored by "
                         "likelihood; auto: letter when answered above chance", choices=("letter", "cloze", "auto"))
    control: str = option("empty", "control prompt: empty (question removed, the paper's) or frame (keeps the "
                          "question frame)", choices=("empty", "frame"))
    normalize: str = option("count", "divide by item counts (the paper's) or by summed P", choices=("count", "prob"))
    contrast_general: bool = option(False, "also subtract a general-ability table (half of --general; the other "
                                    "half is evaluated)")
    t_mlp: float = option(0.01, "top fraction of MLP gate neurons (the paper's)")
    t_attn: float = option(0.002, "top fraction of q/k/v neurons (the paper's)")
    r_mlp: float = option(0.01, "CountryRC removal fraction, MLP (the paper's)")
    r_attn: float = option(0.01, "CountryRC removal fraction, q/k/v (the paper's)")
    t_specific: float = option(0.003, "top fraction for culture-specific neurons (the paper's)")
    r_specific: float = option(0.01, "CountryRC removal fraction for culture-specific neurons (the paper's)")
    z_min: float = option(0.5, "minimum z-score of a culture-specific neuron (the paper's)")
    n_random: int = option(10, "random neuron sets to compare against", flag="--random")
    kinship: bool = option(True, "the kinship matrix")
    instance_view: bool = option(True, "the per-item view of the general neurons (one more scoring pass)")
    max_test_items: int | None = option(300, "cap per evaluation set (seeded sample; none = all)")
    max_scoring_items: int | None = option(400, "cap on the cultural and CountryRC scoring items (seeded sample; "
                                           "none = all)")
    max_per_question: int | None = option(1, "items per (country, question) kept before sampling (none = all)")
    n_parts: int = option(10, "random parts of the scoring items, for the stability table")
    n_boot: int = option(5, "bootstrap resamples of the scoring items for the stability table")
    batch_size: int = option(16, "items per forward/backward pass")
    dtype: str = option("float32", "weights' dtype", choices=("float32", "bfloat16", "float16"))
    device: str | None = option(None, "device for the whole model, e.g. cuda:0 (default: cpu)")
    seed: int = option(0, "seed of samples and random sets")
    progress: bool = option(True, "progress bars")
    device_map: str | None = option(None, "spread the model over devices: 'auto' or a JSON object (accelerate map)")
    attn_implementation: str | None = option(None, "attention implementation (sdpa, eager, ...; default: eager for "
                                             "soft-capped attention such as Gemma 2, else sdpa); recorded in tables")
    checkpoint: bool = option(True, "checkpoint scoring next to each score table (RUN/scores/*.ckpt); an "
                              "interrupted run resumes from it")
    checkpoint_every: int = option(20, "batches between scoring checkpoints")
    checkpoint_activations: bool = option(False, "recompute each decoder layer in the backward pass instead of "
                                          "keeping its activations (long inputs: far less memory, ~1.3x the time; "
                                          "same scores)")
    finetune: bool = option(False, "after the report, run the module study on the culture-general neurons (see "
                            "'culnig finetune'), into RUN/finetune/")
    finetune_end: str = option("top,bottom,random", "the study's ends to train, each from the same start")
    finetune_budget: float = option(0.10, "share of the decoder layers' parameters to train (the paper's)")
    finetune_by: str = option("count", "rank blocks by neuron count (paper) or count per neuron of the block",
                              choices=("count", "density"))
    finetune_task: str = option("builtin:qnli", "target task: builtin:qnli, qnli, mrpc (hub), qnli:PATH, mrpc:PATH")
    finetune_task_test: str | None = option(None, "target task's test items (needed for a local file)")
    finetune_lora: bool = option(False, "LoRA (r=32, alpha=64) on the picked modules instead of full training")
    finetune_epochs: int = option(1, "training epochs")
    finetune_lr: float = option(3e-5, "constant AdamW learning rate (the paper's)")
    finetune_train_batch_size: int = option(4, "training items per forward/backward")
    finetune_grad_accum: int = option(4, "batches per optimizer step")
    finetune_max_steps: int | None = option(None, "stop after this many optimizer steps (none = the epochs)")
    finetune_max_train_items: int | None = option(None, "seeded sample of the training items (none = all)")

    protocol: str = option("ours", "ours, or paper: the paper's prompts and variants, CountryRC over its 8 countries, "
                           "bfloat16, eager attention for Gemma, the first 5 MCQs per (country, question), no item caps and its "
                           "pooled random baseline beside ours (see PAPER_PRESET)", choices=("ours", "paper"))
    n_random_paper: int = option(0, "random sets drawn the paper's way, uniform over all gate and q/k/v neurons pooled "
                                 "(paper protocol: 10)", flag="--paper-random")
    saq: str | None = option(None, "a BLEnD folder: also evaluate its short-answer questions in English and the "
                             "local languages (greedy generation)")
    saq_max_per_country: int | None = option(5, "short-answer questions per country (none = all)")
    saq_max_new_tokens: int = option(48, "generated tokens per short answer")

    def study_settings(self):
        """The module study's ``StudySettings`` from the ``finetune_*`` options (None without ``finetune``)."""
        if not self.finetune:
            return None
        from .finetune_study import StudySettings

        ends = tuple(e.strip() for e in self.finetune_end.split(",") if e.strip())
        return StudySettings(ends=ends, budget=self.finetune_budget, by=self.finetune_by, lora=self.finetune_lora,
                             epochs=self.finetune_epochs, lr=self.finetune_lr,
                             batch_size=self.finetune_train_batch_size, grad_accum=self.finetune_grad_accum,
                             max_steps=self.finetune_max_steps, seed=self.seed, eval_batch_size=self.batch_size,
                             progress=self.progress)


#: ``--protocol paper``: what differs from RunConfig's defaults (the paper's own choices, ynklab/CULNIG).
PAPER_PRESET: dict[str, Any] = dict(
    protocol="paper", crc="paper:countryrc", crc_test="paper:countryrc", format="letter", dtype="bfloat16",
    n_random_paper=10, max_per_question=5, max_scoring_items=None, max_test_items=None,
)


def paper_config(**overrides: Any) -> RunConfig:
    """A ``RunConfig`` with the paper's protocol (``PAPER_PRESET``); ``overrides`` win over the preset."""
    return RunConfig(**{**PAPER_PRESET, **overrides})


def run_preset(explicit: dict[str, Any]) -> dict[str, Any]:
    """The defaults a run's explicitly given options (config file and flags) select: ``PAPER_PRESET`` for
    ``protocol: paper``, else none. Explicit options win over the preset (``culnig_ext.options.build``)."""
    return dict(PAPER_PRESET) if explicit.get("protocol") == "paper" else {}


def attn_implementation(cfg: RunConfig) -> str | None:
    """The attention implementation to load with: the option when given; the paper runs Gemma models with eager
    attention; otherwise None (``load_model`` picks eager for soft-capped attention such as Gemma 2, else SDPA)."""
    if cfg.attn_implementation:
        return cfg.attn_implementation
    return "eager" if cfg.protocol == "paper" and "gemma" in str(cfg.model).lower() else None


@dataclass
class RunOutputs:
    run_dir: Path
    format: str
    general: NeuronSet
    specific: dict[str, NeuronSet]
    report: Path
    timings: dict[str, float] = field(default_factory=dict)


def _sample(items: list[MCItem], cap: int | None, seed: int) -> list[MCItem]:
    if cap is None or len(items) <= cap:
        return items
    g = torch.Generator().manual_seed(seed)
    keep = sorted(torch.randperm(len(items), generator=g)[:cap].tolist())
    return [items[i] for i in keep]


def choose_format(model, tokenizer, items: Sequence[MCItem], batch_size: int, progress: bool) -> tuple[str, str]:
    """``letter`` if the model answers letter-format items above chance (one-sided binomial test at 0.05 against
    the mean of 1/n_choices), else ``cloze`` (also when the tokenizer cannot encode the letter format, e.g. the
    letters are not single tokens). Returns the format and a sentence saying why."""
    try:
        encodings = [encode_choices(it, tokenizer, format="letter") for it in items]
    except TokenizerError as exc:
        return "cloze", f"the tokenizer cannot encode the letter format ({exc}): using the cloze format"
    res = evaluate_encoded(model, list(items), encodings, format="letter", batch_size=batch_size, progress=progress)
    chance = sum(1 / len(it.choices) for it in items) / len(items)
    hits = int(res.correct.sum())
    p = binomtest(hits, len(items), chance, alternative="greater").pvalue
    fmt = "letter" if p < 0.05 else "cloze"
    why = (f"letter-format accuracy {hits}/{len(items)} = {hits / len(items):.1%} vs chance {chance:.1%} "
           f"(binomial p = {p:.3g}): using the {fmt} format")
    return fmt, why


def score_cached(
    path: Path, model, items, *, clamp_min: float | None, batch_size: int, progress: bool, desc: str,
    provenance: dict[str, str] | None = None, checkpoint: bool = False, checkpoint_every: int = 20,
    checkpoint_activations: bool = False,
) -> ScoreTable:
    """Score ``items`` into ``path``, or load ``path`` when it was scored from the same items with the same
    provenance (model, weights, dtype, attention, package version, prompt format, control, clamp); a table that
    differs in any of them is recomputed, naming the field. With ``checkpoint``, an interrupted scoring resumes
    from ``<path>.ckpt``."""
    from .items import as_score_items
    from .provenance import FIELDS, mismatch
    from .scorer import table_provenance

    checked = as_score_items(items)
    if path.is_file():
        table = ScoreTable.load(path)
        wanted = table_provenance(model, clamp_min, provenance)
        wanted["dataset_fingerprint"] = dataset_fingerprint(checked)
        diff = mismatch(table.metadata, wanted, ("dataset_fingerprint",) + FIELDS)
        if diff is None:
            log.info("%s: reusing %s (same items and provenance)", desc, path)
            return table
        field_name, was, now = diff
        log.info("%s: %s was scored with %s=%r, this run has %r: recomputing", desc, path, field_name, was, now)
    log.info("%s: scoring %d items", desc, len(checked))
    ckpt = Path(str(path) + ".ckpt") if checkpoint else None
    table = score(model, checked, batch_size=batch_size, clamp_min=clamp_min, progress=progress,
                  provenance=provenance, checkpoint=ckpt, checkpoint_every=checkpoint_every, keep_checkpoint=True,
                  checkpoint_activations=checkpoint_activations)
    table.save(path)
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
    # Continue with the table as saved: saving adds metadata (format, package version) that enters its fingerprint,
    # and the neuron sets' sources must name the files on disk, the same in a fresh run and in a resumed one.
    return ScoreTable.load(path)


@dataclass
class Condition:
    name: str
    neurons: NeuronSet | None


def evaluate_conditions(
    model, tokenizer, eval_sets: dict[str, list[MCItem]], conditions: Sequence[Condition], *, fmt: str,
    batch_size: int, progress: bool, save_dir: Path | None = None,
) -> dict[str, dict[str, EvalResult]]:
    """``{eval set: {condition: EvalResult}}``; prompts are encoded once per set. Records go to
    ``save_dir.partial/`` and replace ``save_dir`` only once every condition is done (interrupted: ``save_dir`` is
    unchanged)."""
    results: dict[str, dict[str, EvalResult]] = {}
    staging = partial_dir(save_dir) if save_dir is not None else None
    for set_name, items in eval_sets.items():
        encodings = [encode_choices(it, tokenizer, format=fmt) for it in items]
        results[set_name] = {}
        def run():
            if fmt == "cloze":  # the prompt once per item, not once per option (cloze_cache.py)
                return evaluate_cloze_cached(model, items, encodings, batch_size=batch_size, progress=progress)
            return evaluate_encoded(model, items, encodings, format=fmt, batch_size=batch_size, progress=progress)

        for cond in conditions:
            if cond.neurons is None:
                res = run()
            else:
                with inhibit(model, cond.neurons):
                    res = run()
            results[set_name][cond.name] = res
            if staging is not None:
                res.save(staging / f"{slug(set_name)}__{slug(cond.name)}.json")
            log.info("eval %-28s %-12s accuracy %.3f", set_name, cond.name, res.accuracy)
    if staging is not None:
        publish_dir(staging, save_dir)
    return results


def accuracy_rows(set_name: str, by_cond: dict[str, EvalResult], inhibited: str, *, cultural: bool,
                  seed: int) -> list:
    """Report rows of one evaluation set: against our random sets (conditions ``random*``) and, when there are
    any, against the paper's pooled ones (``paper_random*``), each labelled when both are there."""
    randoms = [r for c, r in by_cond.items() if c.startswith("random")]
    paper = [r for c, r in by_cond.items() if c.startswith("paper_random")]
    both = bool(randoms) and bool(paper)
    rows = []
    if randoms or not paper:
        rows.append(accuracy_row(set_name + (" [random: ours, per site]" if both else ""), by_cond["original"],
                                 by_cond.get(inhibited, by_cond["original"]), randoms, cultural=cultural, seed=seed))
    if paper:
        rows.append(accuracy_row(set_name + " [random: paper's, pooled]", by_cond["original"],
                                 by_cond.get(inhibited, by_cond["original"]), paper, cultural=cultural, seed=seed))
    return rows


def slug(text: str) -> str:
    """A file-name-safe form of a group or set name (no path separators)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text).strip("_").lower()


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


def run_pipeline(cfg: RunConfig, *, log_fn: Callable[[str], None] = log.info) -> RunOutputs:
    """Run the whole pipeline into ``cfg.out`` (see the module docstring); returns where everything went."""
    from .models import load_model, parse_device_map
    from .preflight import check_run

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    run_dir = Path(cfg.out)
    check_run(cfg)  # options, model, run folder, reused tables: before the data, the model, or any write

    # data ------------------------------------------------------------------------------------------------
    sources = resolve_sources(cfg.data, cfg.crc, cfg.crc_test)
    per_q = dict(max_per_question=cfg.max_per_question)
    neur_items = _sample(load_items(sources.data, split="neur", seed=cfg.seed, **per_q), cfg.max_scoring_items,
                         cfg.seed)
    test_items = _sample(load_items(sources.data, split="test", seed=cfg.seed, **per_q), cfg.max_test_items,
                         cfg.seed)
    # CountryRC only for the groups of the cultural set: its top neurons are removed per group. The paper's
    # protocol scores its own 8 countries on the first half of the templates and evaluates on all of them.
    groups = list(dict.fromkeys(it.group for it in neur_items))
    if cfg.protocol == "paper":
        crc_split = "neur" if sources.crc.startswith("paper:") else "all"
        crc_items = _sample(load_items(sources.crc, seed=cfg.seed, split=crc_split), cfg.max_scoring_items, cfg.seed)
        crc_test = _sample(load_items(sources.crc_test, seed=cfg.seed), cfg.max_test_items, cfg.seed)
    else:
        crc_items = _sample(load_items(sources.crc, seed=cfg.seed, countries=groups), cfg.max_scoring_items,
                            cfg.seed)
        crc_test = _sample(load_items(sources.crc_test, seed=cfg.seed, countries=groups), cfg.max_test_items,
                           cfg.seed)
    general_eval: list[MCItem] = []
    general_contrast: list[MCItem] = []
    if cfg.general:
        general_items = load_items(cfg.general, seed=cfg.seed)
        if cfg.contrast_general:  # disjoint halves: never evaluate on the items used to pick the neurons
            general_contrast, general_eval = general_items[0::2], general_items[1::2]
        else:
            general_eval = general_items
        general_eval = _sample(general_eval, cfg.max_test_items, cfg.seed)
    study_tasks = None
    if cfg.finetune:  # the study's settings and task, read before the model like the rest
        from .finetune_study import load_study_tasks

        study_tasks = load_study_tasks(cfg)
    log_fn(f"data: {sources.note or 'as given'}")  # after the data read cleanly: an error stays the only line
    log_fn(f"data: {len(neur_items)} scoring items, {len(test_items)} test items, {len(crc_items)} "
           f"CountryRC scoring items, {len(crc_test)} CountryRC test items, {len(general_eval)} non-cultural items")
    (run_dir / "scores").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")

    # model -----------------------------------------------------------------------------------------------
    log_fn(f"loading model {cfg.model!r}")
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device,
                                  device_map=parse_device_map(cfg.device_map),
                                  attn_implementation=attn_implementation(cfg))
    timings["load"] = time.perf_counter() - t0
    notes: list[str] = [f"Data: {sources.note}."] if sources.note else []
    fmt = cfg.format
    if fmt == "auto":
        fmt, why = choose_format(model, tokenizer, neur_items, cfg.batch_size, cfg.progress)
        log_fn(f"{why}")
        notes.append(f"Format chosen automatically: {why}.")

    # score -----------------------------------------------------------------------------------------------
    t = time.perf_counter()
    opts = dict(batch_size=cfg.batch_size, progress=cfg.progress, checkpoint=cfg.checkpoint,
                checkpoint_every=cfg.checkpoint_every, checkpoint_activations=cfg.checkpoint_activations)
    plain, controlled = {"prompt_format": fmt, "control": ""}, {"prompt_format": fmt, "control": cfg.control}
    scores = run_dir / "scores"
    # Cultural and control items are scored with their groups labelled by a random part: the part tables add up
    # to the ordinary ones, and halves / resamples of the parts give the stability measure at no scoring cost.
    parted = {
        "neur": score_cached(scores / "neur_parts.safetensors", model,
                             stability.label_parts(encode(neur_items, tokenizer, format=fmt), cfg.n_parts, cfg.seed),
                             clamp_min=None, desc="culture items", provenance=plain, **opts),
        "ctrl": score_cached(scores / "ctrl_parts.safetensors", model,
                             stability.label_parts(encode(neur_items, tokenizer, format=fmt, control=cfg.control),
                                                   cfg.n_parts, cfg.seed),
                             clamp_min=0.0, desc=f"control items ({cfg.control})", provenance=controlled, **opts),
    }
    for role, table in parted.items():
        stability.collapse(table).save(scores / f"{role}.safetensors")
    neur = ScoreTable.load(scores / "neur.safetensors")
    ctrl = ScoreTable.load(scores / "ctrl.safetensors")
    crc = score_cached(scores / "crc.safetensors", model, encode(crc_items, tokenizer, format=fmt),
                       clamp_min=None, desc="CountryRC items", provenance=plain, **opts)
    contrast = None
    if general_contrast:
        contrast = score_cached(scores / "general.safetensors", model,
                                encode(general_contrast, tokenizer, format=fmt), clamp_min=0.0,
                                desc="general-ability contrast items", provenance=plain, **opts)
    timings["score"] = time.perf_counter() - t

    # identify --------------------------------------------------------------------------------------------
    def identify(tables) -> NeuronSet:
        return select.general(tables["neur"], tables["ctrl"], crc, cfg.t_mlp, cfg.t_attn, cfg.r_mlp, cfg.r_attn,
                              normalize=cfg.normalize, contrast=contrast)

    general = identify({"neur": neur, "ctrl": ctrl})
    general.save(run_dir / "neurons" / "general.json")
    t = time.perf_counter()
    stab = stability.measure(identify, parted, {s.name: s.width for s in neuron_sites(model)}, n_boot=cfg.n_boot,
                             seed=cfg.seed)
    timings["stability"] = time.perf_counter() - t
    if stab.warning:
        log_fn(f"warning: {stab.warning}")
    specific: dict[str, NeuronSet] = {}
    for group in neur.groups:
        if crc is not None and group not in crc.groups:
            log_fn(f"no CountryRC items for group {group!r}: its specific neurons are not filtered by it")
        # The paper divides every group's sums by the table's item count ("total"); with normalize="prob" each
        # group is divided by its own summed P, so groups answered with different confidence compare fairly.
        ns = select.specific(neur, ctrl, crc if group in crc.groups else None, group, cfg.t_specific,
                             cfg.r_specific, cfg.z_min, normalize="prob" if cfg.normalize == "prob" else "total")
        ns.save(run_dir / "neurons" / "specific" / f"{slug(group)}.json")
        specific[group] = ns
    num_layers = len({s.layer for s in neuron_sites(model)})
    summary = summary_table(general, specific, num_layers)
    if cfg.instance_view and len(general):
        t = time.perf_counter()
        per_item = item_scores(model, encode(neur_items, tokenizer, format=fmt), general,
                               batch_size=cfg.batch_size, progress=cfg.progress)
        summary += instance_view(general, positive_share(per_item), len(neur_items))
        timings["instance_view"] = time.perf_counter() - t
    atomic_write_text(run_dir / "summary.md", summary)
    log_fn(f"{len(general)} culture-general neurons; specific: "
           + ", ".join(f"{g} {len(s)}" for g, s in specific.items()))

    # inhibit and evaluate ---------------------------------------------------------------------------------
    t = time.perf_counter()
    conditions = [Condition("original", None), Condition("general", general)]
    conditions += [Condition(f"random{i}", select.random_like(general, model, seed=cfg.seed + i, match="site"))
                   for i in range(cfg.n_random)]
    conditions += [Condition(f"paper_random{i}", select.random_like(general, model, seed=cfg.seed + i, match="none"))
                   for i in range(cfg.n_random_paper)]
    eval_sets = {"Cultural test (BLEnD-style)": test_items, "CountryRC test": crc_test}
    if general_eval:
        eval_sets["General knowledge"] = general_eval
    results = evaluate_conditions(model, tokenizer, eval_sets, conditions, fmt=fmt, batch_size=cfg.batch_size,
                                  progress=cfg.progress, save_dir=run_dir / "eval")
    rows = []
    cultural = {name: name != "General knowledge" for name in results}
    for set_name, by_cond in results.items():
        rows += accuracy_rows(set_name, by_cond, "general", cultural=cultural[set_name], seed=cfg.seed)
    if cfg.saq:
        from .data.saq import load_saq
        from .saq_eval import evaluate_saq, saq_rows

        t_saq = time.perf_counter()
        saq_groups = [g for g in groups if g in BLEND_COUNTRIES]
        saq_items = load_saq(cfg.saq, countries=saq_groups, split="test", max_per_country=cfg.saq_max_per_country,
                             seed=cfg.seed)
        log_fn(f"short answers: {len(saq_items)} items ({len(saq_groups)} countries, English and local)")
        saq_results = evaluate_saq(model, tokenizer, saq_items, [c for c in conditions if not c.name.startswith(
            "paper_random")], max_new_tokens=cfg.saq_max_new_tokens, batch_size=cfg.batch_size,
            progress=cfg.progress)
        rows += saq_rows(saq_results, "general", seed=cfg.seed)
        atomic_write_text(run_dir / "saq_responses.json", json.dumps(
            {c: [asdict(r) for r in res.records] for c, res in saq_results.items()}, ensure_ascii=False, indent=1))
        notes.append(f"Short answers: greedy generation, at most {cfg.saq_max_new_tokens} new tokens, scored by "
                     "lemma match against the annotators' answers (culnig_ext/data/saq.py); responses in "
                     "saq_responses.json.")
        timings["saq"] = time.perf_counter() - t_saq
    rows = with_holm(rows)
    verdict = verdict_from_results(results, cultural, inhibited="general", seed=cfg.seed)
    if verdict is not None:
        log_fn(f"specificity verdict: {verdict.label}: {verdict.reason}")
    timings["evaluate"] = time.perf_counter() - t

    kin = None
    if cfg.kinship and any(len(s) for s in specific.values()):
        t = time.perf_counter()
        sets = {g: s for g, s in specific.items() if len(s)}
        encodings = [encode_choices(it, tokenizer, format=fmt) for it in test_items]
        run = kinship_matrix_encoded(model, test_items, encodings, sets, format=fmt, batch_size=cfg.batch_size,
                                     progress=cfg.progress)
        kin = {"targets": list(run.result.targets), "groups": list(run.result.groups),
               "matrix": run.result.matrix.tolist()}
        timings["kinship"] = time.perf_counter() - t

    notes.append(f"Neurons: top {cfg.t_mlp:g} of MLP gate and {cfg.t_attn:g} of attention q/k/v neurons by "
                 f"neur/N - ctrl/N (normalize={cfg.normalize}, control={cfg.control}), minus the top "
                 f"{cfg.r_mlp:g}/{cfg.r_attn:g} CountryRC neurons.")
    notes.append(f"Random baselines: {cfg.n_random} sets with the same number of neurons per site (seeds "
                 f"{cfg.seed}..{cfg.seed + cfg.n_random - 1}); p: paired bootstrap over items, one-sided.")
    if cfg.n_random_paper:
        from .data.protocols import paper_random_note

        notes.append(paper_random_note(cfg.n_random_paper, cfg.seed) + " Drawn with torch's generator, so the sets "
                     "differ from the paper's Python-random draws; the distribution they come from is the same.")
    if cfg.protocol == "paper":
        notes.append("Protocol: the paper's (ynklab/CULNIG): CountryRC over its 8 countries x 4 instruction variants "
                     "(scored on the first half of the templates, evaluated on all of them, as its eval script does), "
                     "accuracy averaged over the variants, letter/number answer labels, "
                     f"dtype {cfg.dtype}, attention {attn_implementation(cfg)}.")
    timings["total"] = time.perf_counter() - t0
    results_obj = ReportResults(
        title=f"CULNIG run: {model.config._name_or_path}",
        model=str(model.config._name_or_path),
        neuron_set=f"culture-general neurons ({fmt} format)",
        n_neurons=len(general),
        rows=rows,
        kinship=kin,
        layers={"num_layers": num_layers, "counts": layer_counts(general, num_layers)},
        notes=notes,
        verdict=verdict.to_dict() if verdict is not None else None,
        sections=[{"title": "Stability of the culture-general neurons", "markdown": stab.to_markdown()}],
        metadata={"protocol": cfg.protocol, "format": fmt, "data": sources.data, "seconds": f"{timings['total']:.0f}",
                  **{f"time_{k}": f"{v:.1f}" for k, v in timings.items()}},
    )
    report = write_report(run_dir, results_obj)
    if cfg.finetune:
        from .finetune_study import run_finetune_step

        t = time.perf_counter()
        before = {name: by_cond["original"] for name, by_cond in results.items()}
        run_finetune_step(model, tokenizer, general, cfg, study_tasks, eval_sets, fmt, before, log_fn=log_fn)
        timings["finetune"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0
    return RunOutputs(run_dir, fmt, general, specific, report, timings)
