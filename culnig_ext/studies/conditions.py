"""Conditions of an evaluation (the original model, the model with a neuron set inhibited, random sets) and what
every study does with them: choose the answer format (``format_probe``), evaluate every condition on every set, make report rows."""
from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from culnig_ext._utils.atomic import partial_dir, publish_dir
from culnig_ext._utils.names import slug
from culnig_ext.data import encode_choices
from culnig_ext.data.schema import MCItem
from culnig_ext.intervention.cloze_cache import evaluate_cloze_cached
from culnig_ext.intervention.evaluate import EvalResult, evaluate_encoded
from culnig_ext.intervention.inhibit import inhibit
from culnig_ext.intervention.short_answers import SAQResult
from culnig_ext.stats.rows import accuracy_row
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.studies.format_probe import probe_format

log = logging.getLogger("culnig")


def choose_format(model, tokenizer, items: Sequence[MCItem], batch_size: int, progress: bool) -> tuple[str, str]:
    """``letter`` if the model answers letter-format items above chance, else ``cloze`` (also when the tokenizer
    cannot encode the letter format, e.g. the letters are not single tokens): the sequential test of
    ``format_probe.probe_format`` on at most 64 of ``items``. Returns the format and a sentence saying why."""
    probe = probe_format(model, tokenizer, items, batch_size=batch_size, progress=progress)
    return probe.format, probe.reason


@dataclass
class Condition:
    """One evaluation condition: ``neurons`` inhibited (None: the original model), called ``name``."""

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
            log.debug("eval %-28s %-12s accuracy %.3f", set_name, cond.name, res.accuracy)
        log.info("eval %s: %s", set_name, accuracy_line(results[set_name]))
    if staging is not None:
        publish_dir(staging, save_dir)
    return results


def accuracy_line(by_cond: dict[str, EvalResult]) -> str:
    """``original 0.500, general 0.375, random 0.438 ± 0.088 (2 sets)``: each condition's accuracy, the random sets
    (``random*``, ``paper_random*``) as mean ± sample sd."""
    parts, pooled = [], {}
    for name, res in by_cond.items():
        kind = "paper_random" if name.startswith("paper_random") else "random" if name.startswith("random") else None
        if kind is None:
            parts.append(f"{name} {res.accuracy:.3f}")
        else:
            pooled.setdefault(kind, []).append(res.accuracy)
    for kind, values in pooled.items():
        spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
        parts.append(f"{kind} {statistics.fmean(values):.3f}{spread} ({len(values)} set{'s' * (len(values) > 1)})")
    return ", ".join(parts)


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


def saq_rows(results: dict[str, SAQResult], inhibited: str, *, seed: int = 0) -> list:
    """Report rows per (country, language), then per language over all countries: original vs ``inhibited`` vs
    the random conditions (``random*``)."""
    original = results["original"]
    keys = list(dict.fromkeys((r.group, r.language) for r in original.records))
    langs = list(dict.fromkeys(r.language for r in original.records))
    rows = []
    subsets = [(f"BLEnD short answers: {g} ({lang})", [(r.group, r.language) == (g, lang) for r in original.records])
               for g, lang in keys]
    subsets += [(f"BLEnD short answers: all countries ({lang})", [r.language == lang for r in original.records])
                for lang in langs]
    for name, keep in subsets:
        sub = {c: res.subset(keep) for c, res in results.items()}
        randoms = [res for c, res in sub.items() if c.startswith("random")]
        rows.append(accuracy_row(name, sub["original"], sub.get(inhibited, sub["original"]), randoms, seed=seed))
    return rows
