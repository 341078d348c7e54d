"""``culnig overlap``: how much neuron sets identified on different data share, and what inhibiting one does to the
others' evaluation sets (the paper's generalisation findings: culture and values, other topics, other formats).

* ``overlap_stats(sets)``: per pair, the shared count, Jaccard index ``|A & B| / |A | B|``, and shared counts per
  layer; per set, its size and counts per kind.
* ``cross_effects(model, tokenizer, sets, eval_sets)``: accuracy of every evaluation set with nothing inhibited and
  with each neuron set inhibited; the drop matrix (rows: inhibited set, columns: evaluation set).
* ``write_overlap(out, stats, effects)``: ``overlap.json``, ``overlap.md`` (tables) and ``overlap.png`` (heatmaps),
  each written atomically.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from culnig_ext._utils.atomic import atomic_write_bytes, atomic_write_text
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.models.sites import parse_site_name

OVERLAP_JSON, OVERLAP_MD, OVERLAP_PNG = "overlap.json", "overlap.md", "overlap.png"


def _layers(ns: NeuronSet) -> dict[int, set[tuple[str, int]]]:
    out: dict[int, set[tuple[str, int]]] = {}
    for n in ns:
        out.setdefault(parse_site_name(n.site)[0], set()).add((n.site, n.index))
    return out


def overlap_stats(sets: Mapping[str, NeuronSet]) -> dict[str, Any]:
    """Sizes, pairwise shared counts, Jaccard indices and per-layer shared counts of named neuron sets."""
    names = list(sets)
    if len(names) < 2:
        raise ValueError(f"overlap needs at least 2 neuron sets, got {len(names)}")
    pairs = {name: set(ns.pairs) for name, ns in sets.items()}
    layers = {name: _layers(ns) for name, ns in sets.items()}
    shared = [[len(pairs[a] & pairs[b]) for b in names] for a in names]
    jaccard = [[(len(pairs[a] & pairs[b]) / len(pairs[a] | pairs[b])) if pairs[a] | pairs[b] else 0.0
                for b in names] for a in names]
    all_layers = sorted({layer for per in layers.values() for layer in per})
    per_layer = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            per_layer.append({"a": a, "b": b, "shared": {str(layer): len(layers[a].get(layer, set())
                                                                         & layers[b].get(layer, set()))
                                                         for layer in all_layers}})
    return {"names": names, "sizes": [len(sets[n]) for n in names],
            "kinds": [sets[n].counts_by_kind() for n in names], "shared": shared, "jaccard": jaccard,
            "layers": all_layers, "per_layer": per_layer}


def cross_effects(model, tokenizer, sets: Mapping[str, NeuronSet], eval_sets: Mapping[str, Sequence[Any]], *,
                  fmt: str = "letter", batch_size: int = 16, progress: bool = True) -> dict[str, Any]:
    """Accuracy of each evaluation set, original and with each neuron set inhibited; ``drop[i][j]`` = original
    accuracy of evaluation set j minus its accuracy with set i inhibited."""
    from culnig_ext.studies.conditions import Condition, evaluate_conditions

    for ns in sets.values():
        ns.validate(model)
    conditions = [Condition("original", None)] + [Condition(f"inhibit:{name}", ns) for name, ns in sets.items()]
    results = evaluate_conditions(model, tokenizer, dict(eval_sets), conditions, fmt=fmt, batch_size=batch_size,
                                  progress=progress)
    evals = list(eval_sets)
    original = [results[e]["original"].accuracy for e in evals]
    inhibited = [[results[e][f"inhibit:{name}"].accuracy for e in evals] for name in sets]
    drop = [[original[j] - row[j] for j in range(len(evals))] for row in inhibited]
    return {"sets": list(sets), "eval_sets": evals, "n_items": [len(eval_sets[e]) for e in evals],
            "original": original, "inhibited": inhibited, "drop": drop}


def markdown(stats: Mapping[str, Any], effects: Mapping[str, Any] | None = None) -> str:
    """The overlap tables (and cross-effects when given) as Markdown."""
    names = stats["names"]
    lines = ["# Neuron-set overlap", "", "| set | neurons | MLP gate | attention q/k/v |", "|---|---:|---:|---:|"]
    for n, size, kinds in zip(names, stats["sizes"], stats["kinds"]):
        lines.append(f"| {n} | {size} | {kinds.get('mlp', 0)} | {kinds.get('attn', 0)} |")
    lines += ["", "Shared neurons (upper triangle) and Jaccard index (lower triangle):", "",
              "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for i, a in enumerate(names):
        cells = []
        for j in range(len(names)):
            if i == j:
                cells.append(str(stats["sizes"][i]))
            elif j > i:
                cells.append(str(stats["shared"][i][j]))
            else:
                cells.append(f"{stats['jaccard'][i][j]:.3f}")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", "Shared neurons per layer:", "", "| pair | " + " | ".join(f"L{layer}" for layer in stats["layers"])
              + " |", "|---|" + "---:|" * len(stats["layers"])]
    for p in stats["per_layer"]:
        lines.append(f"| {p['a']} & {p['b']} | " + " | ".join(str(p["shared"][str(layer)]) for layer in stats["layers"])
                     + " |")
    if effects is not None:
        evals = effects["eval_sets"]
        lines += ["", "## Cross-effects", "",
                  "Accuracy (%) of each evaluation set (columns) with nothing / each set (rows) inhibited; in "
                  "brackets the drop in points.", "",
                  "| inhibited | " + " | ".join(f"{e} (n={n})" for e, n in zip(evals, effects["n_items"])) + " |",
                  "|---|" + "---:|" * len(evals),
                  "| (none) | " + " | ".join(f"{100 * a:.1f}" for a in effects["original"]) + " |"]
        for name, row, drop in zip(effects["sets"], effects["inhibited"], effects["drop"]):
            lines.append(f"| {name} | " + " | ".join(f"{100 * a:.1f} ({100 * d:+.1f})" for a, d in zip(row, drop))
                         + " |")
    return "\n".join(lines) + "\n"


def heatmap_png(stats: Mapping[str, Any], effects: Mapping[str, Any] | None = None) -> bytes:
    """Jaccard heatmap (and the cross-effect drop heatmap beside it when given)."""
    from matplotlib.figure import Figure

    from culnig_ext.reporting.plots import png_bytes

    names = stats["names"]
    panels = 2 if effects is not None else 1
    fig = Figure(figsize=(1.5 + 0.7 * len(names) * panels + (2 if effects else 0), 1.5 + 0.6 * len(names)))
    ax = fig.add_subplot(1, panels, 1)
    jac = np.asarray(stats["jaccard"], dtype=np.float64)
    im = ax.imshow(jac, cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{jac[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if jac[i, j] > 0.5 else "white")
    ax.set_title("Jaccard overlap")
    fig.colorbar(im, ax=ax)
    if effects is not None:
        ax2 = fig.add_subplot(1, 2, 2)
        drop = 100.0 * np.asarray(effects["drop"], dtype=np.float64)
        bound = max(float(np.abs(drop).max()), 1e-9)
        im2 = ax2.imshow(drop, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
        ax2.set_xticks(range(len(effects["eval_sets"])), effects["eval_sets"], rotation=45, ha="right")
        ax2.set_yticks(range(len(effects["sets"])), effects["sets"])
        for i in range(drop.shape[0]):
            for j in range(drop.shape[1]):
                ax2.text(j, i, f"{drop[i, j]:.1f}", ha="center", va="center", fontsize=7)
        ax2.set_xlabel("evaluation set")
        ax2.set_ylabel("inhibited set")
        ax2.set_title("Accuracy drop (points)")
        fig.colorbar(im2, ax=ax2)
    return png_bytes(fig)


def write_overlap(out: str | Path, stats: Mapping[str, Any], effects: Mapping[str, Any] | None = None) -> Path:
    """Write ``overlap.json``, ``overlap.md`` and ``overlap.png`` into ``out``; returns the Markdown's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / OVERLAP_JSON, json.dumps({"overlap": stats, "cross_effects": effects}, indent=1) + "\n")
    atomic_write_bytes(out / OVERLAP_PNG, heatmap_png(stats, effects))
    return atomic_write_text(out / OVERLAP_MD, markdown(stats, effects))


def set_name(path: str | Path, taken: Sequence[str]) -> str:
    """A short unique name for a neuron-set file: its stem, or its parent/stem when the stem is taken."""
    p = Path(path)
    name = p.stem
    if name in taken:
        name = f"{p.parent.name}/{p.stem}"
    return name
