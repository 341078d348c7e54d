"""Conditions of an evaluation (the original model, the model with a neuron set inhibited, random sets) and what
every study does with them: choose the answer format, evaluate every condition on every set, make report rows."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from scipy.stats import binomtest

from culnig_ext._utils.atomic import partial_dir, publish_dir
from culnig_ext._utils.names import slug
from culnig_ext.data import TokenizerError, encode_choices
from culnig_ext.data.schema import MCItem
from culnig_ext.intervention.cloze_cache import evaluate_cloze_cached
from culnig_ext.intervention.evaluate import EvalResult, evaluate_encoded
from culnig_ext.intervention.inhibit import inhibit
from culnig_ext.intervention.short_answers import SAQResult
from culnig_ext.stats.rows import accuracy_row
from culnig_ext.selection.neurons import NeuronSet

log = logging.getLogger("culnig")


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
