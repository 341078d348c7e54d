"""The validation report of ``culnig validate``: ``validation.json`` (every figure), ``validation.md`` (tables read
from the same figures) and its plots (ROC and precision-recall curves per method, recall against scoring items,
planted and recovered neurons per layer, the kinship matrix)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from culnig_ext.reporting.markdown_page import write_markdown_page
from culnig_ext._utils.atomic import atomic_write_bytes, atomic_write_text
from culnig_ext.reporting.plots import kinship_png, png_bytes


def _f(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _ci(value: float, interval: list[float] | None) -> str:
    if not interval:
        return _f(value)
    return f"{_f(value)} [{_f(interval[0])}, {_f(interval[1])}]"


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def curves_png(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], labels: Mapping[str, str], kind: str) -> bytes:
    """ROC (``kind="roc"``) or precision-recall (``"pr"``) curves of every method's scores against the truth."""
    from matplotlib.figure import Figure
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig = Figure(figsize=(5.2, 4.2))
    ax = fig.add_subplot()
    for method, (scores, truth) in curves.items():
        if kind == "roc":
            x, y, _ = roc_curve(truth, scores)
        else:
            y, x, _ = precision_recall_curve(truth, scores)
        ax.plot(x, y, label=labels.get(method, method), linewidth=1.2)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate (recall)")
        ax.set_title("ROC: planted vs other MLP gate neurons")
    else:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("Precision-recall: planted neurons")
    ax.legend(fontsize=7)
    return png_bytes(fig)


def efficiency_png(eff: Mapping[str, Any], labels: Mapping[str, str]) -> bytes:
    """Recall at the planted size against the number of scoring items, one line per method (error bars: sd over
    subsets)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 3.6))
    ax = fig.add_subplot()
    for method, series in eff["methods"].items():
        ax.errorbar(eff["sizes"], series["recall_at_k"], yerr=series["recall_sd"], label=labels.get(method, method),
                    marker="o", markersize=3, capsize=2, linewidth=1.2)
    ax.set_xscale("log")
    ax.set_xlabel("scoring items")
    ax.set_ylabel("recall at the planted size")
    ax.set_ylim(0, 1.02)
    ax.set_title("Sample efficiency")
    ax.legend(fontsize=7)
    return png_bytes(fig)


def planted_layers_png(layers: Mapping[str, Any]) -> bytes:
    """Planted neurons per layer beside CULNIG's and LAPE's recovered MLP neurons."""
    from matplotlib.figure import Figure

    n = layers["num_layers"]
    x = np.arange(n)
    fig = Figure(figsize=(max(5.0, 0.28 * n + 2), 3.2))
    ax = fig.add_subplot()
    ax.bar(x - 0.27, layers["planted"], width=0.27, label="planted")
    ax.bar(x, layers["recovered"]["culnig"], width=0.27, label="CULNIG general (MLP)")
    ax.bar(x + 0.27, layers["recovered"]["lape"], width=0.27, label="LAPE (all countries)")
    ax.set_xlabel("layer")
    ax.set_ylabel("MLP gate neurons")
    ax.set_title("Planted and recovered neurons per layer")
    ax.legend(fontsize=7)
    return png_bytes(fig)


def _ranking_table(fig: Mapping[str, Any], labels: Mapping[str, str], view: str) -> list[str]:
    ranking, intervals = fig["ranking"], fig.get("intervals", {})
    key = "general" if view == "general" else "specific_mean"
    band = view == "general" and any(by.get("general_in_band") for by in ranking.values())
    lines = ["| method | precision = recall at the planted size | average precision | AUROC |"
             + (" AUROC in the planted layers |" if band else ""), "|---|---:|---:|---:|" + ("---:|" if band else "")]
    for m, by in ranking.items():
        values = by[key]
        ci = intervals.get(m, {}).get(key, {})
        row = (f"| {labels.get(m, m)} | {_ci(values['precision_at_k'], ci.get('precision_at_k'))} | "
               f"{_ci(values['average_precision'], ci.get('average_precision'))} | "
               f"{_ci(values['auroc'], ci.get('auroc'))} |")
        if band:
            row += f" {_f((by.get('general_in_band') or {}).get('auroc'))} |"
        lines.append(row)
    return lines


def _header_lines(fig: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """The title, the planted folder, planting's accuracy and bit-identity, the tables' weights, the intervals."""
    p = fig["planted"]
    before, after = p.get("accuracy_before") or {}, p.get("accuracy_after") or {}
    check = p.get("check") or {}
    lines = ["# Does it find the right neurons? Recovery of planted culture neurons", "",
             f"Planted folder `{p['dir']}` (base model `{p['base_model']}`): {len(p['countries'])} fictional "
             f"countries, {', '.join(str(n) for n in sorted(set(p['neurons_per_country'].values())))} planted MLP gate "
             f"neurons each, "
             f"{p['union']} distinct planted neurons among the {p['universe']} MLP gate neurons; "
             f"{p['n_scoring_items']} scoring items.", "",
             f"Held-out accuracy of the planted facts: {_pct(before.get('accuracy'))} before planting, "
             f"{_pct(after.get('accuracy'))} after ({after.get('n', '?')} items, 4 options)."]
    if check:
        lines.append(f"Planting changed {check.get('entries_changed')} of the {check.get('entries_allowed')} "
                     f"entries it was allowed to (planted rows of gate/up, columns of down); "
                     f"{check.get('untouched_parameters')} other parameters and every other entry bit-identical.")
    if "base_comparison" in fig:
        lines.append(f"Re-checked against the base model loaded afresh: {fig['base_comparison']['entries_changed']} "
                     "entries differ, all inside the planted neurons.")
    weights = fig.get("tables")
    if weights:
        lines.append(f"Mean P(y|x) of the scoring items {weights['mean_p_neur']:.3g}, of their options-only controls "
                     f"{weights['mean_p_ctrl']:.3g}, of the reading items {weights['mean_p_crc']:.3g}; per item, the "
                     f"control's summed score is {weights['ctrl_share']:.3g} of the scoring items' and the reading "
                     f"items' {weights['crc_share']:.3g} (scores are weighted by P, so a control the model gives "
                     "almost no probability subtracts almost nothing).")
    lines += ["", "Intervals: 95% percentile bootstrap over the scoring items (resampled within each country, "
              f"{fig['settings']['n_boot']} resamples). Universe: the MLP gate neurons (where the neurons were "
              "planted, and what LAPE ranks); a method's filtered-out neurons rank last. \"In the planted layers\": "
              "the same ranking among the neurons of the layers that hold planted ones (what is left once the "
              "layer band itself is no clue).", "",
              "## All countries together: the union of the planted sets", ""]
    return lines


def _general_lines(fig: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """The all-countries ranking, the CountryRC filter's removals and the selected sets."""
    lines: list[str] = []
    lines += _ranking_table(fig, labels, "general")
    crc = fig.get("crc_filter")
    if crc:
        lines += ["", f"The CountryRC filter (the top {fig['settings']['r_mlp']:g} of the MLP gate neurons by their "
                  f"score on the reading items) removes {crc['removed']} neurons, {crc['planted_removed']} of the "
                  f"{crc['planted']} planted ones among them."]
    sets = fig.get("sets", {})
    if sets:
        lines += ["", "Selected sets (CULNIG: the general set's MLP part; LAPE: the union of its country sets; "
                  "random: as many neurons as planted):", "",
                  "| method | selected | planted found | precision | recall |", "|---|---:|---:|---:|---:|"]
        for m, s in sets.items():
            g = s["general"]
            lines.append(f"| {labels.get(m, m)} | {g['selected']} | {g['hits']} | {_f(g['precision'])} | "
                         f"{_f(g['recall'])} |")
    return lines


def _specific_lines(fig: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """Each country's ranking, the country sets and CULNIG's confusion matrix."""
    lines: list[str] = []
    sets = fig.get("sets", {})
    p = fig["planted"]
    lines += ["", "## Culture-specific: each country's planted set G_c", "", "Ranking of each country's neurons "
              "by the method's country score (means over countries):", ""]
    lines += _ranking_table(fig, labels, "specific")
    if sets:
        lines += ["", "Country sets (CULNIG: `specific`, z-score >= z_min; LAPE: its country sets): mean recall of "
                  "G_c in country c's set, mean precision, and the mean share of another country's planted "
                  "neurons found in c's set (confusion off the diagonal):", "",
                  "| method | recall of G_c | precision | cross-country share |", "|---|---:|---:|---:|"]
        for m, s in sets.items():
            lines.append(f"| {labels.get(m, m)} | {_f(s['specific_recall_mean'])} | "
                         f"{_f(s['specific_precision_mean'])} | {_f(s['cross_recall_mean'])} |")
        conf = sets["culnig"]["confusion"]
        countries = p["countries"]
        lines += ["", "CULNIG's confusion matrix (row: country c's set; column: share of country d's planted "
                  "neurons in it):", "", "| set \\ planted | " + " | ".join(countries) + " |",
                  "|---|" + "---:|" * len(countries)]
        for c, row in zip(countries, conf):
            lines.append(f"| {c} | " + " | ".join(_f(v, 2) for v in row) + " |")
    return lines


def _kinship_lines(fig: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """The planted kin pairs against the recovered sets' overlap and the kinship matrix."""
    lines: list[str] = []
    kin = fig.get("kinship", {})
    if kin:
        lines += ["", "## Kinship", "", f"Planted kin pairs: " + (", ".join(
            f"{k['a']}–{k['b']} ({k['shared']} shared)" for k in kin.get("kin_pairs", [])) or "none") + ".", "",
            f"Spearman correlation of the planted overlap |G_a ∩ G_b| with the overlap (Jaccard) of CULNIG's country "
            f"sets: {_f(kin.get('rho_set_overlap'))}."]
        if "rho_inhibition" in kin:
            lines.append(f"With the kinship matrix (accuracy drop of country b when a's set is inhibited): "
                         f"{_f(kin['rho_inhibition'])}; mean drop on the own country {_pct(kin.get('mean_drop_self'))}, "
                         f"on a kin country {_pct(kin.get('mean_drop_kin'))}, on an unrelated one "
                         f"{_pct(kin.get('mean_drop_unrelated'))}.")
    return lines


def _inhibition_lines(fig: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """Accuracies with the recovered, planted and random sets inhibited, and the verdicts."""
    lines: list[str] = []
    inh = fig.get("inhibition")
    if inh:
        lines += ["", "## Inhibition", "", f"Accuracy with {inh['sizes']['recovered']} recovered (CULNIG general) "
                  f"neurons, the {inh['sizes']['planted']} planted ones, or random sets of the recovered set's size "
                  "(same neurons per site) inhibited:", "",
                  "| set | items | original | planted | recovered | random (mean) | p recovered vs random |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in inh["sets"]:
            randoms = [v for k, v in row.items() if k.startswith("random")]
            lines.append(f"| {row['set']} | {row['n_items']} | {_pct(row['original'])} | {_pct(row['planted'])} | "
                         f"{_pct(row['recovered'])} | {_pct(float(np.mean(randoms)) if randoms else None)} | "
                         f"{_f(row.get('p_recovered_vs_random'), 4)} |")
        for who, v in inh["verdict"].items():
            if v is not None:
                lines.append(f"\nVerdict with the {who} set inhibited: **{v['label']}**: {v['reason']}")
    return lines


def _efficiency_lines(fig: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """Recall at the planted size against the number of scoring items."""
    lines: list[str] = []
    eff = fig.get("sample_efficiency")
    if eff:
        head = [labels.get(m, m) for m in eff["methods"]]
        lines += ["", "## Sample efficiency", "", "Recall at the planted size of the all-countries ranking against "
                  "the number of scoring items (mean over balanced random subsets):", "",
                  "| scoring items | " + " | ".join(head) + " |", "|---:|" + "---:|" * len(head)]
        for k, size in enumerate(eff["sizes"]):
            lines.append(f"| {size} | " + " | ".join(_f(s["recall_at_k"][k]) for s in eff["methods"].values()) + " |")
    return lines


def _closing_lines(fig: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """The negative control and the figures."""
    lines: list[str] = []
    inh = fig.get("inhibition")
    neg = fig.get("negative_control")
    if neg:
        lines += ["", "## Negative control: the unplanted base model, same items", "",
                  "The same pipeline on the model before planting must not find the planted indices above chance "
                  "(AUROC near 0.5):", ""]
        lines += _ranking_table(neg, labels, "general")
    lines += ["", "## Figures", "", "![ROC](roc.png) ![precision-recall](pr.png)", "",
              "![recall against scoring items](sample_efficiency.png)", "", "![layers](layers.png)"]
    if inh and "kinship" in inh:
        lines += ["", "![kinship](kinship.png)"]
    lines += ["", "Every figure is in `validation.json`; the selected sets are under `sets/`."]
    return lines


def validation_markdown(fig: Mapping[str, Any]) -> str:
    """The report's Markdown, every number read from ``fig`` (what ``validation.json`` holds)."""
    labels = fig["methods"]
    lines: list[str] = []
    for section in (_header_lines, _general_lines, _specific_lines, _kinship_lines, _inhibition_lines,
                    _efficiency_lines, _closing_lines):
        lines += section(fig, labels)
    return "\n".join(lines) + "\n"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_validation(folder: Path, figures: Mapping[str, Any], *,
                     curves: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write ``validation.json``, ``validation.md`` and the plots into ``folder``; returns the Markdown's path."""
    folder = Path(folder)
    data = _jsonable(dict(figures))
    atomic_write_text(folder / "validation.json", json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    labels = figures["methods"]
    atomic_write_bytes(folder / "roc.png", curves_png(curves, labels, "roc"))
    atomic_write_bytes(folder / "pr.png", curves_png(curves, labels, "pr"))
    if "sample_efficiency" in figures:
        atomic_write_bytes(folder / "sample_efficiency.png", efficiency_png(figures["sample_efficiency"], labels))
    atomic_write_bytes(folder / "layers.png", planted_layers_png(figures["layers"]))
    kin = figures.get("inhibition", {}).get("kinship")
    if kin:
        atomic_write_bytes(folder / "kinship.png", kinship_png(kin))
    path = atomic_write_text(folder / "validation.md", validation_markdown(data))
    write_markdown_page(folder, "validation.md")
    return path


__all__ = ["curves_png", "efficiency_png", "planted_layers_png", "validation_markdown", "write_validation"]
