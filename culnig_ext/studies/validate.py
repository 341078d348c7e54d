"""Validate: run the real pipeline pieces on a planted model and measure how well each method recovers the planted
neurons (``culnig validate DIR --out OUT``).

Inputs: the folder ``culnig plant`` wrote (``studies.plant``: ``DIR/model``, ``DIR/planted.json``, ``DIR/data``).
Steps, each a function:

1. ``score_planted``: score the scoring MCQs and their options-only controls (``scoring.scorer.score``, one row per
   item, so that resampling items is adding rows), the CountryRC-style reading items (per country), and the
   activation probability of the same scoring items (``selection.lape.activation_probability``).
2. ``recover``: for every method (``METHODS``) a continuous score per MLP gate neuron (``general_scores``,
   ``specific_scores``) and its selected sets (``selected_sets``: ``selection.culnig.general/specific``,
   ``selection.lape.select``, ``selection.culnig.random_like``), compared with the planted neurons
   (``stats.recovery``): precision/recall at the planted size, average precision, AUROC (universe: the MLP gate
   neurons, where the neurons were planted and where LAPE ranks), precision/recall of the selected set, per-country
   recall and the country confusion matrix; bootstrap intervals by resampling the scoring items within each country
   (``bootstrap``); recall against the number of scoring items (``sample_efficiency``).
3. ``inhibition``: accuracy of the held-out facts, the reading items and a non-cultural set with the recovered set,
   the planted set and random sets of the recovered set's size inhibited (``studies.conditions``), and the
   report's verdict (``stats.verdict``); the kinship matrix of CULNIG's country sets (``reporting.analysis``) and
   its rank correlation with the planted kinship.
4. Honesty: the same recovery on the unplanted base model (negative control; its AUROCs should be near 0.5, or
   show how much the layers the neurons were planted in rank high or low by themselves; every ranking figure is also
   given among the planted layers' neurons only, ``general_in_band``), and a bit-for-bit comparison of the planted
   model with the base model (only planted entries differ).

Outputs: ``OUT/validation.json`` (every figure), ``OUT/validation.md`` and its plots, ``OUT/sets/<method>__<country
or general>.json`` (every selected set), ``OUT/tables/{neur,ctrl,crc,lape}.safetensors`` (the score tables by
country the point figures come from), ``OUT/eval/`` (per-item records of the inhibition conditions),
``OUT/timings.json``.

Methods (``METHODS``): ``culnig`` as in the paper (control subtracted, CountryRC neurons removed, z-score filter
for countries), ``prob`` (the same with every table divided by its summed P instead of its item count: the
pipeline's ``normalize="prob"``), ``no_control``, ``no_crc``, ``raw`` (plain P-weighted gradient x activation,
neither), ``lape`` and ``random``. Continuous scores: CULNIG variants rank by their contrast score, with the neurons their filters
remove (top CountryRC, z below ``z_min``) ranked last; LAPE ranks by minus the entropy of the neuron's activation
probabilities over countries (per country: the country's share of them), neurons LAPE's filter drops ranked last;
random draws uniform scores.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from culnig_ext._utils.atomic import atomic_write_text, partial_dir, publish_dir
from culnig_ext.data import encode, load_items
from culnig_ext.data.items import ScoreItem
from culnig_ext.data.jsonl import read_jsonl
from culnig_ext.data.schema import MCItem, SchemaError
from culnig_ext.data.splits import sample_items
from culnig_ext.data.synthetic import World
from culnig_ext.models.sites import MLP, neuron_sites, parse_site_name
from culnig_ext.reporting.analysis import kinship_matrix_encoded, layer_counts
from culnig_ext.scoring.scorer import score
from culnig_ext.scoring.table import ScoreTable
from culnig_ext.selection import culnig as select
from culnig_ext.selection import lape
from culnig_ext.selection.neurons import Neuron, NeuronSet, site_key
from culnig_ext.stats import recovery
from culnig_ext.stats.rows import with_holm
from culnig_ext.stats.verdict import from_results as verdict_from_results
from culnig_ext.studies.conditions import Condition, accuracy_rows, evaluate_conditions
from culnig_ext.studies.ground_truth_config import ValidateConfig
from culnig_ext.studies.plant import DATA_FILES, PLANTED_FORMAT, entry_bits, neuron_params
from culnig_ext.studies import preflight
from culnig_ext.studies.option_checks import validate_options

log = logging.getLogger("culnig")

METHODS = ("culnig", "prob", "no_control", "no_crc", "raw", "lape", "random")
METHOD_LABELS = {
    "culnig": "CULNIG (paper: control, CountryRC filter)",
    "prob": "CULNIG, scores divided by summed P",
    "no_control": "CULNIG without the control",
    "no_crc": "CULNIG without the CountryRC filter",
    "raw": "raw gradient x activation",
    "lape": "LAPE (activation probability)",
    "random": "random",
}
SCORED = ("culnig", "prob", "no_control", "no_crc", "raw", "lape")  # methods whose scores come from the model


# ------------------------------------------------------------------------------------------------- inputs
@dataclass
class Planted:
    """A planted folder read back: ground truth, world, item sets (by ``plant.DATA_FILES`` key)."""

    path: Path
    truth: dict[str, Any]
    world: World
    neurons: dict[str, list[tuple[str, int]]]
    items: dict[str, list[MCItem]]

    @property
    def countries(self) -> list[str]:
        return list(self.neurons)

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def union(self) -> list[tuple[str, int]]:
        return list(dict.fromkeys(n for ns in self.neurons.values() for n in ns))

    @property
    def layers(self) -> set[int]:
        """The layers holding planted neurons."""
        return {parse_site_name(s)[0] for s, _ in self.union()}


def read_planted(path: str | Path) -> Planted:
    """Read ``culnig plant``'s folder. ``FileNotFoundError`` / ``SchemaError`` naming the file and field."""
    path = Path(path)
    gt_path = path / "planted.json"
    if not gt_path.is_file():
        raise FileNotFoundError(f"{path} is not a planted folder: {gt_path} is missing (run culnig plant --out {path})")
    if not (path / "model" / "config.json").is_file():
        raise FileNotFoundError(f"{path / 'model'} holds no model (config.json missing)")
    try:
        truth = json.loads(gt_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{gt_path}, line {exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(truth, dict) or truth.get("format") != PLANTED_FORMAT:
        raise SchemaError(f"{gt_path}: field 'format': expected {PLANTED_FORMAT!r}")
    for key in ("neurons", "world", "base_model", "prompt_format", "seed"):
        if key not in truth:
            raise SchemaError(f"{gt_path}: field {key!r}: missing")
    world = World.from_dict(truth["world"], where=f"{gt_path}, field 'world'")
    raw = truth["neurons"]
    if not isinstance(raw, dict) or not raw:
        raise SchemaError(f"{gt_path}: field 'neurons': expected an object of countries")
    neurons: dict[str, list[tuple[str, int]]] = {}
    for country, pairs in raw.items():
        where = f"{gt_path}: field 'neurons.{country}'"
        if country not in world.countries:
            raise SchemaError(f"{where}: not a country of the world")
        try:
            neurons[country] = [(str(s), int(i)) for s, i in pairs]
            for s, i in neurons[country]:
                site_key(s)
                if i < 0:
                    raise ValueError(f"negative index {i}")
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"{where}: expected [site, index] pairs ({exc})") from None
        if not neurons[country]:
            raise SchemaError(f"{where}: no neurons")
    items = {key: read_jsonl(path / "data" / name) for key, name in DATA_FILES.items()}
    return Planted(path, truth, world, neurons, items)


# ------------------------------------------------------------------------------------------ per-item tables
def per_item(encoded: Sequence[ScoreItem], pair_ids: Sequence[str]) -> list[ScoreItem]:
    """The items with their group replaced by ``pair_ids[i]`` (one table row per item)."""
    return [dataclasses.replace(it, group=g) for it, g in zip(encoded, pair_ids)]


def collapse(table: ScoreTable, row_country: Sequence[str], countries: Sequence[str], weights: np.ndarray | None,
             sites: Sequence[str] | None = None) -> ScoreTable:
    """A per-item table (one row per item, ``row_country[r]`` its country) added up by country with integer
    ``weights[r]`` (None: all 1): a resample of the items is a weight vector. ``sites``: only these sites."""
    n = len(table.groups)
    w = torch.ones(n, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    rows = {c: i for i, c in enumerate(countries)}
    m = torch.zeros(len(countries), n, dtype=torch.float64)
    m[torch.tensor([rows[c] for c in row_country]), torch.arange(n)] = w
    keep = list(sites) if sites is not None else table.sites
    sums = {s: m @ table[s] for s in keep}
    counts = (m @ table.counts.to(torch.float64)).round().to(torch.int64)
    return ScoreTable(list(countries), counts, sums, m @ table.prob_sums, table.metadata)


@dataclass
class Scores:
    """One model's per-item score tables of the scoring items and the reading items' table by country."""

    neur: ScoreTable  # [items, N], group = item id
    ctrl: ScoreTable  # [items, N], rows in the order of ``neur``
    crc: ScoreTable  # [countries, N]
    lape: ScoreTable  # [items, N_mlp] active-token counts
    row_country: list[str]
    countries: list[str]

    def tables(self, weights: np.ndarray | None = None, mlp_only: bool = False) -> dict[str, ScoreTable]:
        mlp = [s for s in self.neur.sites if parse_site_name(s)[1] == MLP] if mlp_only else None
        return {"neur": collapse(self.neur, self.row_country, self.countries, weights, mlp),
                "ctrl": collapse(self.ctrl, self.row_country, self.countries, weights, mlp),
                "lape": collapse(self.lape, self.row_country, self.countries, weights),
                "crc": self.crc}


def score_planted(model, tokenizer, planted: Planted, *, fmt: str, batch_size: int, progress: bool) -> Scores:
    """Score the scoring items, their controls (clamped at 0, as the pipeline does), the reading items, and the
    scoring items' activation probability."""
    scoring, control = planted.items["scoring"], planted.items["control"]
    ids = [it.id for it in scoring]
    if [it.id for it in control] != [i + "::ctrl" for i in ids]:
        raise SchemaError(f"{planted.path / 'data' / DATA_FILES['control']}: the control items do not follow the "
                          "scoring items one for one (ids <scoring id>::ctrl)")
    countries = planted.countries
    row_country = [it.group for it in scoring]
    mlp_sites = [s.name for s in neuron_sites(model, kinds=(MLP,))]
    neur_items = per_item(encode(scoring, tokenizer, format=fmt), ids)
    ctrl_items = per_item(encode(control, tokenizer, format=fmt), ids)
    neur = score(model, neur_items, batch_size=batch_size, groups=ids, progress=progress)
    ctrl = score(model, ctrl_items, batch_size=batch_size, groups=ids, clamp_min=0.0, progress=progress)
    reading = [it for it in planted.items["reading"] if it.group in countries]
    crc = score(model, encode(reading, tokenizer, format=fmt), batch_size=batch_size, groups=countries,
                progress=progress)
    act = lape.activation_probability(model, neur_items, batch_size=batch_size, sites=mlp_sites, groups=ids,
                                      progress=progress)
    return Scores(neur, ctrl, crc, act, row_country, countries)


# ------------------------------------------------------------------------------------ the MLP gate universe
@dataclass
class Universe:
    """The MLP gate neurons side by side in site order: position <-> (site, index)."""

    sites: list[str]
    widths: list[int]

    @property
    def offsets(self) -> list[int]:
        return [0] + list(np.cumsum(self.widths))

    @property
    def n(self) -> int:
        return int(sum(self.widths))

    def position(self, site: str, index: int) -> int:
        return self.offsets[self.sites.index(site)] + int(index)

    def pair(self, position: int) -> tuple[str, int]:
        offsets = self.offsets
        k = int(np.searchsorted(offsets, position, side="right") - 1)
        return self.sites[k], int(position - offsets[k])

    def truth(self, neurons: Sequence[tuple[str, int]]) -> np.ndarray:
        t = np.zeros(self.n, dtype=bool)
        for s, i in neurons:
            t[self.position(s, i)] = True
        return t

    def cat(self, per_site: Mapping[str, torch.Tensor]) -> np.ndarray:
        return torch.cat([per_site[s].reshape(-1) for s in self.sites]).numpy().astype(np.float64)


def universe_of(table: ScoreTable) -> Universe:
    sites = sorted((s for s in table.sites if parse_site_name(s)[1] == MLP), key=site_key)
    return Universe(sites, [int(table[s].shape[1]) for s in sites])


def _demote(score: np.ndarray, drop: np.ndarray) -> np.ndarray:
    """``score`` with the ``drop`` positions set below every other score (ranked last, still finite)."""
    out = score.copy()
    if drop.any():
        out[drop] = (score[~drop].min() if (~drop).any() else 0.0) - 1.0
    return out


def _crc_drop(crc: ScoreTable, uni: Universe, r: float, row: int | None = None, pooled_sites=None) -> np.ndarray:
    """Positions (of the universe) that CULNIG's CountryRC filter removes: the top ``floor(n * r)`` by the
    CountryRC score (summed over countries, or country ``row``), n = the MLP neurons (general) or all neurons
    (``pooled_sites``, specific: MLP and attention ranked together)."""
    sites = pooled_sites if pooled_sites is not None else uni.sites
    div = float(crc.counts.sum())
    values = torch.cat([(crc[s].sum(0) if row is None else crc[s][row]) / div for s in sites])
    top = select.top_fraction(values, r)
    removed = torch.zeros(values.numel(), dtype=torch.bool)
    removed[top] = True
    offsets = [0]
    for s in sites:
        offsets.append(offsets[-1] + crc[s].shape[1])
    return torch.cat([removed[offsets[sites.index(s)]:offsets[sites.index(s) + 1]] for s in uni.sites]).numpy()


@dataclass
class Prepared:
    """What every method's scores are made of, computed once per set of tables: per country and universe neuron
    ``neur[g] / N`` and ``ctrl[g] / N_ctrl`` (N: the tables' item counts, as ``select.specific``'s "total"), and
    LAPE's activation probabilities ``[G, M]``, their normalisation over countries and the neurons its filter
    drops (no country above the ``filter_rate`` quantile of all probabilities)."""

    countries: list[str]
    neur: np.ndarray
    ctrl: np.ndarray
    neur_p: np.ndarray  # [G, M] neur[g] / P_neur[g]
    ctrl_p: np.ndarray
    neur_pt: np.ndarray  # [M] sum_g neur[g] / sum_g P_neur[g]
    ctrl_pt: np.ndarray
    lape_normed: np.ndarray
    lape_dropped: np.ndarray


def prepare(tables: Mapping[str, ScoreTable], uni: Universe, cfg: ValidateConfig) -> Prepared:
    neur, ctrl = tables["neur"], tables["ctrl"]
    raw_neur = torch.cat([neur[s] for s in uni.sites], dim=1)
    raw_ctrl = torch.cat([ctrl[s] for s in uni.sites], dim=1)
    per_group = raw_neur / float(neur.counts.sum())
    ctrl_group = raw_ctrl / float(ctrl.counts.sum())
    for name, t in (("neur", neur), ("ctrl", ctrl)):
        if not bool((t.prob_sums > 0).all()):
            raise ValueError(f"the {name} table has a country with summed P 0: cannot divide by it")
    neur_p, ctrl_p = raw_neur / neur.prob_sums[:, None], raw_ctrl / ctrl.prob_sums[:, None]
    neur_pt, ctrl_pt = raw_neur.sum(0) / float(neur.prob_sums.sum()), raw_ctrl.sum(0) / float(ctrl.prob_sums.sum())
    probs = torch.cat([lape.probabilities(tables["lape"], s) for s in uni.sites], dim=1)
    normed = torch.nan_to_num(probs / probs.sum(0, keepdim=True), nan=0.0)
    flat = probs.flatten()
    k = min(max(1, round(flat.numel() * cfg.filter_rate)), flat.numel())
    bar = float(flat.kthvalue(k).values)
    dropped = (probs > bar).sum(0) == 0
    return Prepared(list(neur.groups), per_group.numpy(), ctrl_group.numpy(), neur_p.numpy(), ctrl_p.numpy(),
                    neur_pt.numpy(), ctrl_pt.numpy(), normed.numpy(), dropped.numpy())


def general_scores(prep: Prepared, method: str, rng: np.random.Generator, drops: Mapping[str, np.ndarray]
                   ) -> np.ndarray:
    """Each universe neuron's score for the union of the planted sets (module docstring); ``drops["general"]``:
    the CountryRC filter's positions."""
    if method == "random":
        return rng.random(prep.neur.shape[1])
    if method == "lape":
        normed = prep.lape_normed
        logs = np.where(normed > 0, np.log(np.where(normed > 0, normed, 1.0)), 0.0)
        return _demote((normed * logs).sum(0), prep.lape_dropped)  # minus the entropy
    if method == "prob":
        return _demote(prep.neur_pt - prep.ctrl_pt, drops["general"])
    s = prep.neur.sum(0)
    if method in ("culnig", "no_crc"):
        s = s - prep.ctrl.sum(0)
    if method in ("culnig", "no_control"):
        s = _demote(s, drops["general"])
    return s


def specific_scores(prep: Prepared, method: str, country: str, cfg: ValidateConfig, rng: np.random.Generator,
                    drops: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each universe neuron's score for ``country``'s planted set; ``drops[country]``: the CountryRC filter's
    positions for it (pooled over all neurons, as ``select.specific`` ranks)."""
    if method == "random":
        return rng.random(prep.neur.shape[1])
    row = prep.countries.index(country)
    if method == "lape":
        return _demote(prep.lape_normed[row], prep.lape_dropped)
    if method == "prob":
        g = prep.neur_p - prep.ctrl_p
    else:
        g = prep.neur - prep.ctrl if method in ("culnig", "no_crc") else prep.neur
    s = g[row]
    if method == "raw":
        return s
    mean, sd = g.mean(0), g.std(0)
    tol = 4 * g.shape[0] * np.finfo(np.float64).eps * np.abs(g).max(0)
    z = np.where(sd <= tol, 0.0, (s - mean) / np.where(sd <= tol, 1.0, sd))
    drop = z < cfg.z_min
    if method in ("culnig", "prob", "no_control"):
        drop = drop | drops[country]
    return _demote(s, drop)


def crc_drops(crc: ScoreTable, uni: Universe, cfg: ValidateConfig, countries: Sequence[str]) -> dict[str, np.ndarray]:
    """The CountryRC filter's positions: ``"general"`` (MLP, ``r_mlp``) and per country (pooled, ``r_specific``)."""
    pooled = sorted(crc.sites, key=site_key)
    out = {"general": _crc_drop(crc, uni, cfg.r_mlp)}
    for c in countries:
        out[c] = _crc_drop(crc, uni, cfg.r_specific, row=crc.group_index(c), pooled_sites=pooled)
    return out


# --------------------------------------------------------------------------------------------- selected sets
def selected_sets(tables: Mapping[str, ScoreTable], planted: Planted, widths: Mapping[str, int],
                  cfg: ValidateConfig) -> dict[str, dict[str, NeuronSet]]:
    """``{method: {"general": set, country: set}}`` from the real selection functions."""
    neur, ctrl, crc = tables["neur"], tables["ctrl"], tables["crc"]
    variants = {"culnig": (ctrl, crc, cfg.z_min), "no_control": (None, crc, cfg.z_min),
                "no_crc": (ctrl, None, cfg.z_min), "raw": (None, None, None)}
    out: dict[str, dict[str, NeuronSet]] = {}
    for method, (c, r, z) in variants.items():
        sets = {"general": select.general(neur, c, r, cfg.t_mlp, cfg.t_attn, cfg.r_mlp, cfg.r_attn)}
        for country in planted.countries:
            sets[country] = select.specific(neur, c, r, country, cfg.t_specific, cfg.r_specific, z)
        out[method] = sets
    out["prob"] = {"general": select.general(neur, ctrl, crc, cfg.t_mlp, cfg.t_attn, cfg.r_mlp, cfg.r_attn,
                                             normalize="prob")}
    for country in planted.countries:
        out["prob"][country] = select.specific(neur, ctrl, crc, country, cfg.t_specific, cfg.r_specific, cfg.z_min,
                                               normalize="prob")
    out = {m: out[m] for m in ("culnig", "prob", "no_control", "no_crc", "raw")}
    by_country = lape.select(tables["lape"], top_rate=cfg.top_rate, filter_rate=cfg.filter_rate,
                             activation_bar_ratio=cfg.activation_bar_ratio)
    union = NeuronSet([], method="lape")
    for ns in by_country.values():
        union = union.union(ns)
    out["lape"] = {"general": union, **{c: by_country[c] for c in planted.countries}}
    truth_all = NeuronSet.from_pairs(planted.union(), method="planted")
    out["random"] = {"general": select.random_like(truth_all, widths, seed=cfg.seed, match="kind")}
    for k, country in enumerate(planted.countries):
        truth_c = NeuronSet.from_pairs(planted.neurons[country], method="planted")
        out["random"][country] = select.random_like(truth_c, widths, seed=cfg.seed + 1 + k, match="kind")
    return out


def _mlp_pairs(ns: NeuronSet) -> set[tuple[str, int]]:
    return {(n.site, n.index) for n in ns if parse_site_name(n.site)[1] == MLP}


# -------------------------------------------------------------------------------------------------- recovery
def point_metrics(tables: Mapping[str, ScoreTable], planted: Planted, uni: Universe, cfg: ValidateConfig,
                  drops: Mapping[str, np.ndarray], seed: int) -> dict[str, Any]:
    """Every method's ranking metrics (general view and per country) on the given tables."""
    truth_all = uni.truth(planted.union())
    out: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    prep = prepare(tables, uni, cfg)
    # the same ranking among the neurons of the planted layers only: how much of the figure the layer band explains
    band = np.repeat([parse_site_name(s)[0] in planted.layers for s in uni.sites], uni.widths)
    for method in METHODS:
        g = general_scores(prep, method, rng, drops)
        in_band = recovery.ranking_metrics(g[band], truth_all[band]) if (~band).any() else None
        per_country = {}
        for c in planted.countries:
            s = specific_scores(prep, method, c, cfg, rng, drops)
            per_country[c] = recovery.ranking_metrics(s, uni.truth(planted.neurons[c]))
        out[method] = {"general": recovery.ranking_metrics(g, truth_all), "general_in_band": in_band,
                       "specific": per_country,
                       "specific_mean": {k: float(np.mean([m[k] for m in per_country.values()]))
                                         for k in ("precision_at_k", "average_precision", "auroc")}}
    return out


def stratified_weights(row_country: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """Bootstrap weights: each country's items resampled with replacement (as many as it has)."""
    w = np.zeros(len(row_country), dtype=np.int64)
    by: dict[str, list[int]] = {}
    for i, c in enumerate(row_country):
        by.setdefault(c, []).append(i)
    for rows in by.values():
        picks = rng.integers(0, len(rows), size=len(rows))
        np.add.at(w, np.asarray(rows)[picks], 1)
    return w


FIGURES = ("precision_at_k", "average_precision", "auroc")


def bootstrap(scores: Scores, planted: Planted, uni: Universe, cfg: ValidateConfig, drops, n_boot: int,
              seed: int) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Percentile intervals of every method's general figures and of its mean per-country figures, over
    ``n_boot`` stratified resamples of the scoring items. ``{method: {"general"|"specific_mean": {figure:
    [low, high]}}}``."""
    rng = np.random.default_rng(seed)
    truth_all = uni.truth(planted.union())
    truths = {c: uni.truth(ns) for c, ns in planted.neurons.items()}
    draws: dict[str, dict[str, dict[str, list[float]]]] = {
        m: {v: {f: [] for f in FIGURES} for v in ("general", "specific_mean")} for m in METHODS}
    for _ in range(n_boot):
        w = stratified_weights(scores.row_country, rng)
        prep = prepare(scores.tables(w, mlp_only=True), uni, cfg)
        for method in METHODS:
            g = recovery.ranking_metrics(general_scores(prep, method, rng, drops), truth_all)
            per = [recovery.ranking_metrics(specific_scores(prep, method, c, cfg, rng, drops), truths[c])
                   for c in planted.countries]
            for f in FIGURES:
                draws[method]["general"][f].append(g[f])
                draws[method]["specific_mean"][f].append(float(np.mean([p[f] for p in per])))
    return {m: {v: {f: list(recovery.percentile_interval(vals)) for f, vals in by_f.items()}
                for v, by_f in by_view.items()} for m, by_view in draws.items()}


def balanced_subset(row_country: Sequence[str], size: int, rng: np.random.Generator) -> np.ndarray:
    """0/1 weights of ``size`` items drawn evenly across countries: each country's items in a random order, then
    taken round-robin (first of every country, second of every country, ...), so every country keeps
    ``floor(size / K)`` items or one more."""
    by: dict[str, list[int]] = {}
    for i, c in enumerate(row_country):
        by.setdefault(c, []).append(i)
    ranked = []
    for k, rows in enumerate(by.values()):
        for rank, i in enumerate(rng.permutation(rows).tolist()):
            ranked.append((rank, k, i))
    w = np.zeros(len(row_country), dtype=np.int64)
    for _, _, i in sorted(ranked)[:size]:
        w[i] = 1
    return w


def sample_efficiency(scores: Scores, planted: Planted, uni: Universe, cfg: ValidateConfig, drops,
                      sizes: Sequence[int], seed: int) -> dict[str, Any]:
    """Recall at the planted size and AUROC of the general ranking against the number of scoring items: for every
    size, ``cfg.sample_draws`` random subsets balanced over countries (``balanced_subset``; mean and sd); all
    items once."""
    rng = np.random.default_rng(seed)
    truth_all = uni.truth(planted.union())
    n_items = len(scores.row_country)
    out: dict[str, Any] = {"sizes": [], "methods": {m: {"recall_at_k": [], "recall_sd": [], "auroc": [],
                                                         "auroc_sd": []} for m in SCORED}}
    for size in list(sizes) + [n_items]:
        draws = 1 if size == n_items else cfg.sample_draws
        per: dict[str, list[dict[str, float]]] = {m: [] for m in SCORED}
        for _ in range(draws):
            prep = prepare(scores.tables(balanced_subset(scores.row_country, size, rng), mlp_only=True), uni, cfg)
            for m in SCORED:
                per[m].append(recovery.ranking_metrics(general_scores(prep, m, rng, drops), truth_all))
        out["sizes"].append(int(size))
        for m in SCORED:
            r = [p["recall_at_k"] for p in per[m]]
            a = [p["auroc"] for p in per[m]]
            out["methods"][m]["recall_at_k"].append(float(np.mean(r)))
            out["methods"][m]["recall_sd"].append(float(np.std(r, ddof=1)) if len(r) > 1 else 0.0)
            out["methods"][m]["auroc"].append(float(np.mean(a)))
            out["methods"][m]["auroc_sd"].append(float(np.std(a, ddof=1)) if len(a) > 1 else 0.0)
    return out


def set_figures(sets: Mapping[str, Mapping[str, NeuronSet]], planted: Planted) -> dict[str, Any]:
    """Precision/recall of every selected set (general: its MLP part against the union; country: the whole set
    against G_c), and the confusion matrix of countries."""
    union = set(planted.union())
    truths = {c: set(ns) for c, ns in planted.neurons.items()}
    out = {}
    for method, by in sets.items():
        general = recovery.set_metrics(_mlp_pairs(by["general"]), union)
        general["attn_selected"] = len(by["general"]) - len(_mlp_pairs(by["general"]))
        specific = {c: recovery.set_metrics({(n.site, n.index) for n in by[c]}, truths[c]) for c in planted.countries}
        conf = recovery.confusion({c: {(n.site, n.index) for n in by[c]} for c in planted.countries}, truths)
        off = conf[~np.eye(len(truths), dtype=bool)]
        out[method] = {"general": general, "specific": specific, "confusion": conf.tolist(),
                       "specific_recall_mean": float(np.mean([v["recall"] for v in specific.values()])),
                       "specific_precision_mean": float(np.mean([v["precision"] for v in specific.values()])),
                       "cross_recall_mean": float(off.mean()) if off.size else math.nan}
    return out


def recover(scores: Scores, planted: Planted, cfg: ValidateConfig, widths: Mapping[str, int], *, with_sets: bool,
            sizes: Sequence[int]) -> tuple[dict[str, Any], dict[str, dict[str, NeuronSet]] | None, Universe]:
    """The recovery figures of one model's scores (and, with ``with_sets``, the selected sets and their figures)."""
    tables = scores.tables()
    uni = universe_of(tables["neur"])
    drops = crc_drops(tables["crc"], uni, cfg, planted.countries)
    figures: dict[str, Any] = {"ranking": point_metrics(tables, planted, uni, cfg, drops, cfg.seed)}
    truth = uni.truth(planted.union())
    figures["crc_filter"] = {"removed": int(drops["general"].sum()),
                             "planted_removed": int((drops["general"] & truth).sum()), "planted": int(truth.sum())}
    if cfg.n_boot:
        figures["intervals"] = bootstrap(scores, planted, uni, cfg, drops, cfg.n_boot, cfg.seed + 1)
    sets = None
    if with_sets:
        sets = selected_sets(tables, planted, widths, cfg)
        figures["sets"] = set_figures(sets, planted)
        figures["sample_efficiency"] = sample_efficiency(scores, planted, uni, cfg, drops, sizes, cfg.seed + 2)
    return figures, sets, uni


# ------------------------------------------------------------------------------------------------ inhibition
def inhibition(model, tokenizer, planted: Planted, sets: Mapping[str, Mapping[str, NeuronSet]], cfg: ValidateConfig,
               fmt: str, out_dir: Path) -> dict[str, Any]:
    """Accuracies with the recovered (CULNIG general), planted and random sets inhibited, the verdict, and the
    kinship matrix of CULNIG's country sets."""
    recovered = sets["culnig"]["general"]
    planted_set = NeuronSet.from_pairs(planted.union(), method="planted")
    conditions = [Condition("original", None), Condition("planted", planted_set), Condition("recovered", recovered)]
    conditions += [Condition(f"random{i}", select.random_like(recovered, model, seed=cfg.seed + i, match="site"))
                   for i in range(cfg.n_random)]
    test = sample_items(planted.items["test"], cfg.max_test_items, cfg.seed)
    eval_sets = {"Fictional facts (held-out phrasings)": test,
                 "Reading comprehension (fictional names)": sample_items(planted.items["reading_test"],
                                                                         cfg.max_test_items, cfg.seed)}
    cultural = {name: True for name in eval_sets}
    if cfg.general:
        eval_sets["General knowledge"] = sample_items(load_items(cfg.general, seed=cfg.seed), cfg.max_general_items,
                                                      cfg.seed)
        cultural["General knowledge"] = False
    results = evaluate_conditions(model, tokenizer, eval_sets, conditions, fmt=fmt, batch_size=cfg.batch_size,
                                  progress=cfg.progress, save_dir=out_dir / "eval")
    table = []
    for name, by_cond in results.items():
        accuracies = {cond: res.accuracy for cond, res in by_cond.items()}
        row = {"set": name, "n_items": len(by_cond["original"].records), "cultural": cultural[name], **accuracies}
        for inhibited in ("recovered", "planted"):
            acc_row = accuracy_rows(name, by_cond, inhibited, cultural=cultural[name], seed=cfg.seed)[0]
            row[f"p_{inhibited}_vs_random"] = acc_row.p_value
        table.append(row)
    verdicts = {}
    for inhibited in ("recovered", "planted"):
        v = verdict_from_results(results, cultural, inhibited=inhibited, seed=cfg.seed)
        verdicts[inhibited] = v.to_dict() if v is not None else None
    rows = with_holm([r for name, by_cond in results.items()
                      for r in accuracy_rows(name, by_cond, "recovered", cultural=cultural[name], seed=cfg.seed)])
    out: dict[str, Any] = {"sets": table, "verdict": verdicts, "sizes": {
        "recovered": len(recovered), "planted": len(planted_set)},
        "p_holm_recovered": {r.eval_set: r.p_holm for r in rows}}
    if cfg.kinship:
        spec = {c: sets["culnig"][c] for c in planted.countries if len(sets["culnig"][c])}
        if spec:
            from culnig_ext.data.prompts import encode_choices

            kin_items = planted.items["test"]
            if cfg.max_kinship_items is not None and cfg.max_kinship_items < len(kin_items):
                keep = balanced_subset([it.group for it in kin_items], cfg.max_kinship_items,
                                       np.random.default_rng(cfg.seed))
                kin_items = [it for it, k in zip(kin_items, keep) if k]
            encodings = [encode_choices(it, tokenizer, format=fmt) for it in kin_items]
            kin = kinship_matrix_encoded(model, kin_items, encodings, spec, format=fmt, batch_size=cfg.batch_size,
                                         progress=cfg.progress).result
            out["kinship"] = kin.to_dict()
            out["kinship_items"] = len(kin_items)
    return out


def kinship_figures(planted: Planted, sets: Mapping[str, NeuronSet], matrix: dict[str, Any] | None
                    ) -> dict[str, Any]:
    """Rank correlation of the planted overlap |G_a ∩ G_b| (off the diagonal) with (a) the overlap of the
    recovered country sets and (b) the kinship matrix's accuracy drops (when it was run)."""
    countries = planted.countries
    truth = {c: set(ns) for c, ns in planted.neurons.items()}
    found = {c: {(n.site, n.index) for n in sets[c]} for c in countries}
    pairs = [(a, b) for a in countries for b in countries if a != b]
    planted_overlap = [len(truth[a] & truth[b]) for a, b in pairs]
    set_overlap = [len(found[a] & found[b]) / max(1, len(found[a] | found[b])) for a, b in pairs]
    out: dict[str, Any] = {"kin_pairs": planted.truth.get("kinship", []),
                           "rho_set_overlap": recovery.rank_correlation(planted_overlap, set_overlap)}
    if matrix is not None:
        targets, groups = matrix["targets"], matrix["groups"]
        drops = {(t, g): matrix["matrix"][i][j] for i, t in enumerate(targets) for j, g in enumerate(groups)}
        kept = [(a, b) for a, b in pairs if (a, b) in drops]
        if len(kept) >= 2:
            out["rho_inhibition"] = recovery.rank_correlation([len(truth[a] & truth[b]) for a, b in kept],
                                                              [drops[p] for p in kept])
            kin = [(a, b) for a, b in kept if truth[a] & truth[b]]
            out["mean_drop_kin"] = float(np.mean([drops[p] for p in kin])) if kin else None
            out["mean_drop_unrelated"] = float(np.mean([drops[p] for p in kept if p not in kin]))
            out["mean_drop_self"] = float(np.mean([drops[(c, c)] for c in countries if (c, c) in drops]))
    return out


# -------------------------------------------------------------------------------------------------- honesty
def table_weights(scores: Scores, uni: Universe) -> dict[str, float]:
    """How much each table weighs: the mean P(y|x) of its items and, over the universe, the control's and the
    reading items' summed scores as shares of the cultural items' (per item, as the contrast divides them). A
    control whose items the model gives almost no probability contributes almost nothing to ``neur - ctrl``."""
    def total(table: ScoreTable) -> float:
        return float(sum(float(table[s].sum()) for s in uni.sites)) / max(1, int(table.counts.sum()))

    neur = total(scores.neur)
    return {"mean_p_neur": float(scores.neur.prob_sums.sum() / scores.neur.counts.sum()),
            "mean_p_ctrl": float(scores.ctrl.prob_sums.sum() / scores.ctrl.counts.sum()),
            "mean_p_crc": float(scores.crc.prob_sums.sum() / scores.crc.counts.sum()),
            "ctrl_share": total(scores.ctrl) / neur if neur else float("nan"),
            "crc_share": total(scores.crc) / neur if neur else float("nan")}


def compare_with_base(planted_model, base_model, planted: Planted) -> dict[str, Any]:
    """Bit-for-bit comparison of the planted model with the base model: every differing entry must be a planted
    neuron's (its gate/up row or down column). Returns the counts; ``RuntimeError`` otherwise."""
    allowed = neuron_params(planted_model, planted.union())
    base = dict(base_model.named_parameters())
    changed = outside = 0
    for name, p in planted_model.named_parameters():
        if name not in base or base[name].shape != p.shape:
            raise RuntimeError(f"the base model has no parameter {name!r} of shape {tuple(p.shape)}")
        diff = entry_bits(p) != entry_bits(base[name].to(p.dtype))
        if name in allowed.entries:
            inside = allowed.mask(name).cpu().expand_as(diff)
            outside += int((diff & ~inside).sum())
        else:
            outside += int(diff.sum())
        changed += int(diff.sum())
    if outside:
        raise RuntimeError(f"the planted model differs from the base model in {outside} entries outside the "
                           "planted neurons")
    return {"entries_changed": changed, "entries_changed_outside": 0}


# ---------------------------------------------------------------------------------------------------- the run
@dataclass
class ValidationResult:
    out: Path
    figures: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def parse_sizes(spec: str, n_items: int) -> list[int]:
    """``"25,50,100"`` -> the sizes below ``n_items`` (sorted, unique); ``ValueError`` naming the option."""
    try:
        sizes = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"--sample-sizes must be comma-separated integers, got {spec!r}") from None
    if any(s < 1 for s in sizes):
        raise ValueError(f"--sample-sizes must be positive, got {spec!r}")
    return [s for s in sizes if s < n_items]


def _save_sets(sets: Mapping[str, Mapping[str, NeuronSet]], folder: Path) -> dict[str, str]:
    from culnig_ext._utils.names import slug

    files = {}
    for method, by in sets.items():
        for key, ns in by.items():
            name = f"{method}__{slug(key)}.json"
            ns.save(folder / name)
            files[f"{method}/{key}"] = f"sets/{name}"
    return files


def validate(planted_dir: str | Path, cfg: ValidateConfig) -> ValidationResult:
    """Run ``culnig validate`` (module docstring) into ``cfg.out``, published once everything is written."""
    from culnig_ext.models.loading import load_model
    from culnig_ext.reporting.validation import write_validation

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    validate_options(cfg)
    preflight.device(cfg.device)
    planted = read_planted(planted_dir)
    fmt = str(planted.truth["prompt_format"])
    out = Path(cfg.out)
    sizes = parse_sizes(cfg.sample_sizes, len(planted.items["scoring"]))

    log.info("loading the planted model %s", planted.model_dir)
    model, tokenizer = load_model(str(planted.model_dir), dtype=cfg.dtype, device=cfg.device)
    widths = {s.name: s.width for s in neuron_sites(model)}
    timings["load"] = time.perf_counter() - t0

    t = time.perf_counter()
    scores = score_planted(model, tokenizer, planted, fmt=fmt, batch_size=cfg.batch_size, progress=cfg.progress)
    timings["score"] = time.perf_counter() - t
    t = time.perf_counter()
    figures, sets, uni = recover(scores, planted, cfg, widths, with_sets=True, sizes=sizes)
    figures["tables"] = table_weights(scores, uni)
    tables_by_country = scores.tables()
    timings["recover"] = time.perf_counter() - t
    assert sets is not None

    staging = partial_dir(out)
    t = time.perf_counter()
    figures["inhibition"] = inhibition(model, tokenizer, planted, sets, cfg, fmt, staging)
    timings["inhibition"] = time.perf_counter() - t
    figures["kinship"] = kinship_figures(planted, sets["culnig"], figures["inhibition"].get("kinship"))
    num_layers = 1 + max(parse_site_name(s)[0] for s in widths)
    figures["layers"] = {"num_layers": num_layers,
                         "planted": layer_counts(planted.union(), num_layers)["mlp"],
                         "recovered": {m: layer_counts(sets[m]["general"], num_layers)["mlp"] for m in METHODS}}
    prep = prepare(scores.tables(mlp_only=True), uni, cfg)
    drops = crc_drops(scores.crc, uni, cfg, planted.countries)
    curves = {m: general_scores(prep, m, np.random.default_rng(cfg.seed), drops) for m in METHODS}
    truth_all = uni.truth(planted.union())

    negative = None
    if cfg.negative_control:
        t = time.perf_counter()
        base_name = str(planted.truth["base_model"])
        log.info("negative control: loading the base model %r", base_name)
        del scores
        base, base_tok = load_model(base_name, dtype=cfg.dtype, device=cfg.device)
        figures["base_comparison"] = compare_with_base(model, base, planted)
        del model
        base_scores = score_planted(base, base_tok, planted, fmt=fmt, batch_size=cfg.batch_size,
                                    progress=cfg.progress)
        negative, _, _ = recover(base_scores, planted, cfg, widths, with_sets=False, sizes=())
        figures["negative_control"] = negative
        timings["negative_control"] = time.perf_counter() - t

    figures["settings"] = dataclasses.asdict(cfg)
    figures["planted"] = {"dir": str(planted.path), "base_model": planted.truth["base_model"],
                          "countries": planted.countries, "neurons_per_country": {c: len(v) for c, v in
                                                                                  planted.neurons.items()},
                          "union": len(planted.union()), "universe": uni.n,
                          "n_scoring_items": len(planted.items["scoring"]),
                          "accuracy_before": planted.truth.get("accuracy_before"),
                          "accuracy_after": planted.truth.get("accuracy_after"),
                          "check": planted.truth.get("check")}
    figures["methods"] = {m: METHOD_LABELS[m] for m in METHODS}
    figures["set_files"] = _save_sets(sets, staging / "sets")
    for role, t in tables_by_country.items():
        t.save(staging / "tables" / f"{role}.safetensors")
    write_validation(staging, figures, curves={m: (c, truth_all) for m, c in curves.items()})
    timings["total"] = time.perf_counter() - t0
    atomic_write_text(staging / "timings.json", json.dumps(timings, indent=1) + "\n")
    publish_dir(staging, out)
    return ValidationResult(out, figures, timings)


__all__ = ["METHODS", "METHOD_LABELS", "Planted", "Scores", "Universe", "ValidateConfig", "ValidationResult",
           "bootstrap", "collapse", "compare_with_base", "crc_drops", "general_scores", "inhibition",
           "kinship_figures", "parse_sizes", "table_weights", "point_metrics", "prepare", "Prepared", "read_planted", "recover", "sample_efficiency",
           "balanced_subset", "score_planted", "selected_sets", "set_figures", "specific_scores", "stratified_weights",
           "universe_of", "validate"]
