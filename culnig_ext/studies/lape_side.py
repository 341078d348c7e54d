"""A recipe's group-specific neurons by CULNIG beside LAPE's on the same items (``compare_lape: true``; the
language study's recipe asks for it).

On the run's scoring items LAPE picks its group-specific neurons from activation probabilities
(``selection.lape``, the paper's rates); CULNIG's are the run's specific sets. For the union over groups of each
method's sets: overlap (``studies.compare.overlap``), neurons per layer, and the inhibition effect on every
evaluation set of the run against random sets of the same size per site, with the report's statistics (paired
bootstrap p, Holm over all rows of both methods, MDE) and the specificity verdict (target-tagged sets against
general ones). Per group: the kinship matrix of each method (inhibit a group's set, the accuracy drop of every
group's held-out items; over the groups the method found neurons for, at most ``kinship_groups`` of them),
read as "own group's drop minus the mean drop of the others": a method whose sets are specific to their group
lowers their own group most. ``side_by_side`` writes ``RUN/lape/side_by_side.json`` and
returns the report section's Markdown.
"""
from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from culnig_ext._utils.atomic import atomic_write_text
from culnig_ext.data import encode, encode_choices
from culnig_ext.data.items import as_score_items
from culnig_ext.models.sites import MLP, neuron_sites
from culnig_ext.reporting.analysis import kinship_matrix_encoded, layer_counts
from culnig_ext.reporting.report import verdict_markdown
from culnig_ext.scoring.scorer import dataset_fingerprint
from culnig_ext.scoring.table import ScoreTable
from culnig_ext.selection import culnig as select
from culnig_ext.selection import lape
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.stats.rows import with_holm
from culnig_ext.stats.verdict import from_results as verdict_from_results
from culnig_ext.studies.compare import overlap, overlap_table, union
from culnig_ext.studies.conditions import Condition, accuracy_rows, evaluate_conditions

METHODS = ("CULNIG", "LAPE")


def activation_table(path: Path, model, encoded, *, batch_size: int, progress: bool) -> ScoreTable:
    """LAPE's activation probabilities of ``encoded`` into ``path``, reused when it holds the same items and model."""
    fingerprint = dataset_fingerprint(as_score_items(encoded))
    if path.is_file():
        table = ScoreTable.load(path)
        if (table.metadata.get("dataset_fingerprint") == fingerprint
                and table.metadata.get("model") == str(model.config._name_or_path)):
            return table
    lape.activation_probability(model, encoded, batch_size=batch_size, progress=progress).save(path)
    return ScoreTable.load(path)


def own_vs_others(kin) -> dict[str, Any]:
    """From a ``KinshipResult``: per target group its own drop, the mean drop of the other groups and the excess
    (own - others); the mean excess and the number of groups whose own drop is the larger."""
    per = {}
    for i, target in enumerate(kin.targets):
        row = kin.matrix[i]
        j = kin.groups.index(target)
        others = [float(row[k]) for k in range(len(kin.groups)) if k != j]
        mean_others = sum(others) / len(others) if others else 0.0
        per[target] = {"own": float(row[j]), "others": mean_others, "excess": float(row[j]) - mean_others}
    excess = [v["excess"] for v in per.values()]
    return {"per_group": per, "mean_excess": sum(excess) / len(excess) if excess else None,
            "own_larger": sum(e > 0 for e in excess), "groups": len(excess)}


def _kinship(cfg, model, tokenizer, test, sets: dict[str, NeuronSet], fmt: str, baseline,
             groups: list[str]) -> dict[str, Any] | None:
    """The kinship matrix of one method over ``groups`` (those with neurons), on their held-out items."""
    groups = [g for g in groups if len(sets.get(g, ()))]
    if len(groups) < 2:
        return None
    keep = [it.group in groups for it in test]
    items = [it for it, k in zip(test, keep) if k]
    if baseline is not None:
        baseline = replace(baseline, records=[r for r, k in zip(baseline.records, keep) if k])
    encodings = [encode_choices(it, tokenizer, format=fmt) for it in items]
    run = kinship_matrix_encoded(model, items, encodings, {g: sets[g] for g in groups}, format=fmt,
                                 batch_size=cfg.batch_size, progress=cfg.progress, baseline=baseline)
    return {"targets": list(run.result.targets), "groups": list(run.result.groups),
            "matrix": run.result.matrix.tolist(), **own_vs_others(run.result)}


def _inhibition(cfg, model, tokenizer, data, methods: dict[str, NeuronSet], fmt: str, original: dict, run_dir: Path):
    """Rows (Holm over both methods) and a verdict per method: each union set against its random sets."""
    conditions = []
    for name, ns in methods.items():
        if len(ns):
            conditions.append(Condition(f"{name}:set", ns))
            conditions += [Condition(f"{name}:random{i}", select.random_like(ns, model, seed=cfg.seed + i,
                                                                              match="site"))
                           for i in range(cfg.n_random)]
    eval_sets = {e.name: e.items for e in data.eval_sets if e.items}
    results = evaluate_conditions(model, tokenizer, eval_sets, conditions, fmt=fmt, batch_size=cfg.batch_size,
                                  progress=cfg.progress, save_dir=run_dir / "lape" / "eval") if conditions else {}
    tags = {e.name: e.tag for e in data.eval_sets}
    rows, verdicts = [], {}
    for name in methods:
        by_set = {}
        for set_name in eval_sets:
            got = results.get(set_name, {})
            by_cond = {"original": original[set_name]}
            by_cond.update({c.split(":", 1)[1]: r for c, r in got.items() if c.startswith(f"{name}:")})
            by_set[set_name] = by_cond
            rows += [r for r in accuracy_rows(f"{name}: {set_name}", by_cond, "set",
                                              cultural=tags[set_name] == "target", seed=cfg.seed)]
        v = verdict_from_results(by_set, {s: tags[s] == "target" for s in by_set}, inhibited="set", seed=cfg.seed)
        verdicts[name] = v.to_dict() if v is not None else None
    return with_holm(rows), verdicts


def kinship_groups(cfg, groups: list[str], sets: dict[str, NeuronSet]) -> list[str]:
    """The groups of one method's own-vs-others comparison: those it found neurons for (all of them, or a seeded
    choice of ``cfg.kinship_groups``, as the run's kinship matrix chooses), in the run's group order."""
    found = [g for g in groups if len(sets.get(g, ()))]
    if cfg.kinship_groups is None or len(found) <= cfg.kinship_groups:
        return found
    chosen = set(random.Random(cfg.seed).sample(found, cfg.kinship_groups))
    return [g for g in found if g in chosen]


def side_by_side(cfg, model, tokenizer, data, found, evaluation, fmt: str, run_dir: Path) -> str:
    """CULNIG's and LAPE's group-specific neurons compared (module docstring); writes
    ``run_dir/lape/side_by_side.json`` and ``run_dir/lape/neurons/<group>.json``; returns the section's Markdown."""
    from culnig_ext._utils.names import slug

    encoded = encode(data.neur, tokenizer, format=fmt)
    act = activation_table(run_dir / "scores" / "activation.safetensors", model, encoded,
                           batch_size=cfg.batch_size, progress=cfg.progress)
    lape_sets = lape.select(act)
    for g, ns in lape_sets.items():
        ns.save(run_dir / "lape" / "neurons" / f"{slug(g)}.json")
    per_method = {"CULNIG": found.specific, "LAPE": lape_sets}
    methods = {m: union(sets, f"{m.lower()}-specific-union") for m, sets in per_method.items()}
    sites = neuron_sites(model)
    num_layers = len({s.layer for s in sites})
    n_all, n_mlp = sum(s.width for s in sites), sum(s.width for s in sites if s.kind == MLP)
    original = {name: by_cond["original"] for name, by_cond in evaluation.results.items()}
    rows, verdicts = _inhibition(cfg, model, tokenizer, data, methods, fmt, original, run_dir)
    baseline = original.get(data.test_name)
    if baseline is not None and [r.id for r in baseline.records] != [it.id for it in data.test]:
        baseline = None
    result = {
        "groups": data.groups, "sizes": {m: {g: len(s) for g, s in sets.items()} for m, sets in per_method.items()},
        "overlap": {"all": overlap(methods["CULNIG"], methods["LAPE"], n_all),
                    "mlp": overlap(methods["CULNIG"].of_kind(MLP), methods["LAPE"].of_kind(MLP), n_mlp)},
        "layers": {"num_layers": num_layers, **{m: layer_counts(ns, num_layers) for m, ns in methods.items()}},
        "rows": [r.__dict__ for r in rows], "verdicts": verdicts,
        "own_vs_others": {m: _kinship(cfg, model, tokenizer, data.test, sets, fmt, baseline,
                                      kinship_groups(cfg, data.groups, sets))
                          for m, sets in per_method.items()},
    }
    atomic_write_text(run_dir / "lape" / "side_by_side.json", json.dumps(result, indent=2, default=str) + "\n")
    return side_markdown(result, rows)


def winner_sentence(result: dict[str, Any]) -> str:
    """Which method found the more group-specific neurons, said plainly with the numbers: how many groups each found
    neurons for and how many neurons; then, of the groups compared, in how many its sets lower their own group's
    held-out accuracy more than the other groups' mean. A method is called the more group-specific only when its
    sets do so in some group and in a larger share of groups (ties: the larger mean excess); else neither is."""
    own, sizes = result["own_vs_others"], result["sizes"]
    parts, score = [], {}
    for m in METHODS:
        found = {g: n for g, n in sizes[m].items() if n}
        head = f"{m} found neurons for {len(found)} of {len(sizes[m])} groups ({sum(found.values())} neurons)"
        o = own.get(m)
        if o is None:
            parts.append(head + ", too few groups to compare own against others")
            continue
        parts.append(head + f"; its sets lower their own group's held-out accuracy more than the other groups' in "
                     f"{o['own_larger']} of {o['groups']} groups compared (mean excess {100 * o['mean_excess']:+.1f} "
                     "points)")
        if o["own_larger"] > 0:
            score[m] = (o["own_larger"] / o["groups"], o["mean_excess"])
    if not score:
        verdict = ("Neither method's sets are shown to be group-specific here: no inhibited set lowers its own group "
                   "more than the others (a reading of drops on the held-out items, without a significance test per "
                   "group).")
    elif len(score) == 2 and score["CULNIG"] == score["LAPE"]:
        verdict = "By this measure neither finds more group-specific neurons here."
    else:
        best = max(score, key=score.get)
        other = "LAPE" if best == "CULNIG" else "CULNIG"
        verdict = (f"By this measure **{best}** finds the more group-specific neurons here, not {other} (a reading "
                   "of drops on the held-out items without a significance test per group).")
    return "; ".join(parts) + ". " + verdict


def side_markdown(result: dict[str, Any], rows) -> str:
    """The report section: overlap, inhibition table with Holm, the verdicts, own-vs-others, layers."""
    lines = ["Group-specific neurons of each method on the same scoring items: CULNIG's (gradient x activation, "
             "contrast, surface filter, z-score) and LAPE's (activation probability entropy, the paper's rates). "
             "Sets: the union over groups.", "",
             *overlap_table(result["overlap"])]
    lines += ["", "| inhibited set: evaluation set | items | original | inhibited | random (mean) | inhibited − random "
                  "| MDE | p | Holm p |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rnd = "–" if r.random_mean is None else f"{100 * r.random_mean:.1f}%"
        diff = "–" if r.diff is None else f"{100 * r.diff:+.1f}"
        mde = "–" if r.mde is None else f"{100 * r.mde:.1f}"
        p = "–" if r.p_value is None else f"{r.p_value:.3g}"
        ph = "–" if r.p_holm is None else f"{r.p_holm:.3g}"
        tag = "" if r.cultural else " (general)"
        lines.append(f"| {r.eval_set}{tag} | {r.n_items} | {100 * r.original:.1f}% | {100 * r.inhibited:.1f}% | "
                     f"{rnd} | {diff} | {mde} | {p} | {ph} |")
    for m, v in result["verdicts"].items():
        lines += ["", f"**{m}**: " + ("no verdict (no set with random baselines)" if v is None else ""), ""]
        if v is not None:
            lines.append(verdict_markdown(v))
    lines += ["", "Own group against the others (kinship: inhibit a group's set, accuracy drop of each group's "
                  "held-out items, points):", "", "| group | CULNIG own | CULNIG others | LAPE own | LAPE others |",
              "|---|---:|---:|---:|---:|"]
    own = result["own_vs_others"]
    for g in result["groups"]:
        cells = []
        for m in METHODS:
            per = (own.get(m) or {}).get("per_group", {}).get(g)
            cells += ["–", "–"] if per is None else [f"{100 * per['own']:+.1f}", f"{100 * per['others']:+.1f}"]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines += ["", winner_sentence(result), "", "| layer | CULNIG MLP | CULNIG attn | LAPE MLP | LAPE attn |",
              "|---:|---:|---:|---:|---:|"]
    layers = result["layers"]
    for i in range(layers["num_layers"]):
        lines.append(f"| {i} | {layers['CULNIG']['mlp'][i]} | {layers['CULNIG']['attn'][i]} | "
                     f"{layers['LAPE']['mlp'][i]} | {layers['LAPE']['attn'][i]} |")
    return "\n".join(lines)
