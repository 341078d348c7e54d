"""``culnig compare``: CULNIG's gradient-attribution neurons beside LAPE's activation-probability neurons.

On the same scoring items, each method picks group-specific (culture-specific) neurons: CULNIG with
``select.specific`` over its score tables (cultural minus control, CountryRC removed, z-score across groups), LAPE
with ``lape.select`` over activation probabilities. The comparison reports, for the union over groups of each
method's sets:

- overlap: sizes, shared neurons, Jaccard index, also on MLP gates alone (LAPE ranks MLP neurons only), with the
  overlap two random sets of those sizes would have by chance;
- layer distribution: neurons per layer and kind;
- inhibition effect: accuracy on the same cultural test items with each set zeroed, against ``n_random`` random
  sets with the same number of neurons per site (paired bootstrap p, one-sided: the set lowers accuracy more).

Outputs (atomic): ``OUT/compare.md``, ``OUT/compare.json``, ``OUT/neurons/{culnig,lape}/<group>.json``,
``OUT/scores/*.safetensors`` (reused on re-run when model and items match), ``OUT/eval/*.json``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from culnig_ext.selection import lape
from culnig_ext.selection import culnig as select
from culnig_ext.reporting.analysis import layer_counts
from culnig_ext._utils.atomic import atomic_write_text
from culnig_ext.reporting.markdown_page import write_markdown_page
from culnig_ext.data import encode, load_items
from culnig_ext.data.items import as_score_items
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.studies.config import CompareConfig  # declared with the other studies' options (torch-free)
from culnig_ext.stats.rows import accuracy_row
from culnig_ext.scoring.scorer import dataset_fingerprint
from culnig_ext.models.sites import MLP, neuron_sites
from culnig_ext.scoring.table import ScoreTable

log = logging.getLogger("culnig")


def union(sets: dict[str, NeuronSet], method: str) -> NeuronSet:
    """The union of per-group sets (a neuron's score: its highest over the groups that chose it)."""
    best: dict[tuple[str, int], float] = {}
    for ns in sets.values():
        for n in ns:
            best[(n.site, n.index)] = max(best.get((n.site, n.index), float("-inf")), n.score)
    first = next(iter(sets.values()), None)
    return NeuronSet.from_pairs([(s, i, v) for (s, i), v in best.items()], method=method,
                                model=first.model if first is not None else "",
                                sources=first.sources if first is not None else {})


def overlap(a: NeuronSet, b: NeuronSet, total: int) -> dict[str, float]:
    """Sizes, shared count, Jaccard index, and the shared count two random sets of these sizes would expect among
    ``total`` neurons (``|a| * |b| / total``)."""
    pa, pb = set(a.pairs), set(b.pairs)
    shared = len(pa & pb)
    either = len(pa | pb)
    return {"a": len(pa), "b": len(pb), "shared": shared, "jaccard": shared / either if either else 0.0,
            "expected_by_chance": len(pa) * len(pb) / total if total else 0.0}



def overlap_table(overlaps: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows of the overlap of CULNIG's and LAPE's sets (``overlaps``: ``"all"`` and ``"mlp"`` entries of
    :func:`overlap`'s shape), with their header."""
    lines = ["| neurons | CULNIG | LAPE | shared | Jaccard | shared by chance |", "|---|---:|---:|---:|---:|---:|"]
    for key, label in (("all", "all sites"), ("mlp", "MLP gates")):
        o = overlaps[key]
        lines.append(f"| {label} | {o['a']} | {o['b']} | {o['shared']} | {o['jaccard']:.3f} | "
                     f"{o['expected_by_chance']:.2f} |")
    return lines

def _cached_table(path: Path, items, compute, model) -> ScoreTable:
    fingerprint = dataset_fingerprint(as_score_items(items))
    if path.is_file():
        table = ScoreTable.load(path)
        if (table.metadata.get("dataset_fingerprint") == fingerprint
                and table.metadata.get("model") == str(model.config._name_or_path)):
            log.info("reusing %s (same model and items)", path)
            return table
    compute().save(path)
    return ScoreTable.load(path)


def check_compare(cfg: CompareConfig) -> None:
    """Every number, the model and the output folder, before any data is read or anything loaded or written
    (``culnig_ext.studies.preflight``'s checks, naming the option)."""
    from culnig_ext.studies import option_checks, preflight

    option_checks.compare_options(cfg)
    preflight.model_options(cfg)
    out = Path(cfg.out)
    for role in ("neur", "ctrl", "crc", "activation"):
        path = out / "scores" / f"{role}.safetensors"
        if path.exists():
            try:
                preflight.score_table_header(path, f"{role} table")
            except (ValueError, OSError) as exc:
                raise ValueError(f"{exc}; delete {path} to score it again") from None


def run_compare(cfg: CompareConfig) -> dict[str, Any]:
    """Score, select with both methods, compare, evaluate; writes ``cfg.out`` (see the module docstring) and
    returns the results that ``compare.json`` holds."""
    from culnig_ext.models.loading import load_model
    from culnig_ext._utils.names import slug
    from culnig_ext.data.splits import sample_items
    from culnig_ext.scoring.cache import score_cached
    from culnig_ext.studies.conditions import Condition, choose_format, evaluate_conditions

    check_compare(cfg)
    # The data before anything is written: a bad source leaves no half-made output folder.
    neur_items = sample_items(load_items(cfg.data, split="neur", seed=cfg.seed), cfg.max_items, cfg.seed)
    test_items = sample_items(load_items(cfg.data, split="test", seed=cfg.seed), cfg.max_test_items, cfg.seed)
    groups = list(dict.fromkeys(it.group for it in neur_items))
    crc_items = sample_items(load_items(cfg.crc, seed=cfg.seed, countries=groups), cfg.max_items, cfg.seed)
    out = Path(cfg.out)
    (out / "scores").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")
    log.info("compare: %d scoring items, %d test items, %d CountryRC items in %d groups", len(neur_items),
             len(test_items), len(crc_items), len(groups))
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    fmt = cfg.format
    if fmt == "auto":
        fmt, why = choose_format(model, tokenizer, neur_items, cfg.batch_size, cfg.progress)
        log.info(why)
    opts = dict(batch_size=cfg.batch_size, progress=cfg.progress)
    scores = out / "scores"
    encoded = encode(neur_items, tokenizer, format=fmt)
    neur = score_cached(scores / "neur.safetensors", model, encoded, clamp_min=None, desc="culture items", **opts)
    ctrl = score_cached(scores / "ctrl.safetensors", model, encode(neur_items, tokenizer, format=fmt,
                                                                     control=cfg.control),
                        clamp_min=0.0, desc="control items", **opts)
    crc = score_cached(scores / "crc.safetensors", model, encode(crc_items, tokenizer, format=fmt),
                       clamp_min=None, desc="CountryRC items", **opts)
    act = _cached_table(scores / "activation.safetensors", encoded,
                        lambda: lape.activation_probability(model, encoded, **opts), model)

    culnig_sets = {g: select.specific(neur, ctrl, crc if g in crc.groups else None, g, cfg.t_specific,
                                      cfg.r_specific, cfg.z_min) for g in neur.groups}
    lape_sets = lape.select(act, top_rate=cfg.top_rate, filter_rate=cfg.filter_rate,
                            activation_bar_ratio=cfg.activation_bar_ratio)
    for method, sets in (("culnig", culnig_sets), ("lape", lape_sets)):
        for g, ns in sets.items():
            ns.save(out / "neurons" / method / f"{slug(g)}.json")
    methods = {"CULNIG": union(culnig_sets, "culnig-specific-union"), "LAPE": union(lape_sets, "lape-union")}

    sites = neuron_sites(model)
    num_layers = len({s.layer for s in sites})
    n_all = sum(s.width for s in sites)
    n_mlp = sum(s.width for s in sites if s.kind == MLP)
    c, l_ = methods["CULNIG"], methods["LAPE"]
    result: dict[str, Any] = {
        "model": str(model.config._name_or_path), "format": fmt, "groups": groups,
        "n_scoring_items": len(neur_items), "n_test_items": len(test_items),
        "overlap": {"all": overlap(c, l_, n_all), "mlp": overlap(c.of_kind(MLP), l_.of_kind(MLP), n_mlp)},
        "overlap_by_group": {g: overlap(culnig_sets[g], lape_sets[g], n_all) for g in neur.groups},
        "layers": {"num_layers": num_layers, **{m: layer_counts(ns, num_layers) for m, ns in methods.items()}},
        "inhibition": {},
    }
    conditions = [Condition("original", None)]
    for name, ns in methods.items():
        conditions.append(Condition(name, ns))
        conditions += [Condition(f"{name}-random{i}", select.random_like(ns, model, seed=cfg.seed + i, match="site"))
                       for i in range(cfg.n_random) if len(ns)]
    eval_name = "Cultural test"
    evaluated = evaluate_conditions(model, tokenizer, {eval_name: test_items}, conditions, fmt=fmt,
                                    batch_size=cfg.batch_size, progress=cfg.progress, save_dir=out / "eval")[eval_name]
    for name, ns in methods.items():
        randoms = [evaluated[k] for k in evaluated if k.startswith(f"{name}-random")]
        row = accuracy_row(eval_name, evaluated["original"], evaluated[name], randoms, seed=cfg.seed)
        result["inhibition"][name] = {"neurons": len(ns), "original": row.original, "inhibited": row.inhibited,
                                      "random": row.random, "p_value": row.p_value, "n_items": row.n_items}
    atomic_write_text(out / "compare.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "compare.md", compare_markdown(result))
    write_markdown_page(out, "compare.md")
    return result


def compare_markdown(result: dict[str, Any]) -> str:
    """The comparison as Markdown tables (what ``culnig compare`` prints and writes to ``compare.md``)."""
    lines = [f"# CULNIG vs LAPE on {result['model']}", "",
             f"{result['n_scoring_items']} scoring items in {len(result['groups'])} groups, "
             f"{result['n_test_items']} test items, {result['format']} format. Sets: the union over groups of each "
             "method's group-specific neurons.", "",
             *overlap_table(result["overlap"])]
    lines += ["", "| inhibited set | neurons | accuracy original | inhibited | random sets (mean) | "
              "effect vs random | p |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in result["inhibition"].items():
        rnd = sum(r["random"]) / len(r["random"]) if r["random"] else None
        effect = f"{r['inhibited'] - rnd:+.3f}" if rnd is not None else "-"
        p = f"{r['p_value']:.3g}" if r["p_value"] is not None else "-"
        lines.append(f"| {name} | {r['neurons']} | {r['original']:.3f} | {r['inhibited']:.3f} | "
                     f"{'-' if rnd is None else f'{rnd:.3f}'} | {effect} | {p} |")
    layers = result["layers"]
    lines += ["", "| layer | CULNIG MLP | CULNIG attn | LAPE MLP | LAPE attn |", "|---:|---:|---:|---:|---:|"]
    for i in range(layers["num_layers"]):
        lines.append(f"| {i} | {layers['CULNIG']['mlp'][i]} | {layers['CULNIG']['attn'][i]} | "
                     f"{layers['LAPE']['mlp'][i]} | {layers['LAPE']['attn'][i]} |")
    lines += ["", "| group | CULNIG | LAPE | shared |", "|---|---:|---:|---:|"]
    for g, o in result["overlap_by_group"].items():
        lines.append(f"| {g} | {o['a']} | {o['b']} | {o['shared']} |")
    return "\n".join(lines) + "\n"
