"""The accuracy table's cells, once, for both pages: ``report.md`` (Markdown) and ``report.html`` (the explorer).

Accuracies are shown in percent with two decimals, alignment scores on their own 0-100 scale; p-values with four
decimals (scientific below 1e-4); "–" where a value is missing.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from culnig_ext.stats.rows import AccuracyRow


def pct(x: float) -> str:
    """``0.1234`` -> ``"12.34"`` (percent, two decimals)."""
    return f"{100.0 * x:.2f}"


def value_text(x: float, metric: str) -> str:
    """An accuracy in percent, or an alignment score as it is."""
    return f"{x:.2f}" if metric == "alignment" else pct(x)


def signed_text(x: float, metric: str) -> str:
    """A difference with its sign, in points (percent) or alignment units."""
    return f"{x:+.2f}" if metric == "alignment" else f"{100.0 * x:+.2f}"


def p_text(p: float | None) -> str:
    """A p-value: four decimals, scientific below 1e-4, "–" for None."""
    if p is None:
        return "–"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def accuracy_header(alpha: float) -> list[str]:
    """The accuracy table's column titles."""
    return ["Evaluation set", "Metric", "Items", "Original", "Ours (inhibited)", "Random (mean ± sd)",
            "Ours − random [95% CI]", "MDE (80% power)", "p-value", "Holm p", f"Significant (Holm, p < {alpha:g})"]


def accuracy_cells(rows: Sequence[AccuracyRow], alpha: float) -> list[list[str]]:
    """One list of cell texts per row, in ``accuracy_header``'s order."""
    out = []
    for r in rows:
        name = r.eval_set if r.cultural else f"{r.eval_set} (non-cultural)"
        if r.random_mean is None:
            rand = "–"
        elif r.random_sd is None:
            rand = value_text(r.random_mean, r.metric)
        else:
            rand = f"{value_text(r.random_mean, r.metric)} ± {value_text(r.random_sd, r.metric)}"
        p_final = r.p_holm if r.p_holm is not None else r.p_value
        sig = "–" if p_final is None else ("yes" if p_final < alpha else "no")
        diff = "–"
        if r.diff is not None:
            diff = signed_text(r.diff, r.metric)
            if r.diff_low is not None and r.diff_high is not None:
                diff += f" [{signed_text(r.diff_low, r.metric)}, {signed_text(r.diff_high, r.metric)}]"
        mde = "–" if r.mde is None else value_text(r.mde, r.metric)
        out.append([name, r.metric, str(r.n_items), value_text(r.original, r.metric),
                    value_text(r.inhibited, r.metric), rand, diff, mde, p_text(r.p_value), p_text(r.p_holm), sig])
    return out


def verdict_markdown(verdict: Mapping[str, Any]) -> str:
    """The specificity section: relative excess drops with intervals, their ratio and gap, and the verdict."""
    def iv(x):
        if x is None:
            return "–"
        return f"{100 * x['value']:.1f}% [{100 * x['low']:.1f}%, {100 * x['high']:.1f}%]"

    def ratio(x):
        if x is None:
            return "–"
        return f"{x['value']:.2f} [{x['low']:.2f}, {x['high']:.2f}]"

    level = round(100 * float(verdict.get("confidence_level", 0.95)))
    lines = [f"Relative excess drop of a set = (random − ours) / original accuracy: the share of the original "
             f"accuracy lost to our neurons beyond random neurons of the same size; {level}% bootstrap intervals over "
             "items. Rules: docs/reading_a_report.md (Specificity verdict).", "",
             "| quantity | value [interval] |", "|---|---:|"]
    for name, x in verdict.get("per_set", {}).items():
        lines.append(f"| relative excess drop: {name} | {iv(x)} |")
    lines += [f"| cultural sets (mean) | {iv(verdict.get('cultural'))} |",
              f"| non-cultural sets (mean) | {iv(verdict.get('non_cultural'))} |",
              f"| ratio non-cultural / cultural | {ratio(verdict.get('ratio'))} |",
              f"| gap cultural − non-cultural | {iv(verdict.get('gap'))} |", "",
              f"**Verdict: {verdict['label']}** — {verdict['reason']}."]
    return "\n".join(lines)
