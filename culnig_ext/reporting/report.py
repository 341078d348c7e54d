"""The run report: a Markdown page with the accuracy table, a kinship heatmap and a layer histogram.

Every number in the report comes from the ``ReportResults`` passed in (nothing is typed in); the results are saved
as ``results.json`` beside ``report.md`` so the report can be rebuilt from the run folder alone
(``write_report_from_dir``). All files are written atomically. Plots use matplotlib's Agg canvas directly (no
pyplot, no global backend switch).

``results.json`` (format ``culnig-report/1``)::

    {
      "format": "culnig-report/1",
      "title": str, "model": str,
      "neuron_set": str,            # what was inhibited, e.g. "culture-general (top 0.1%)"
      "n_neurons": int | null,
      "alpha": float,               # significance level of the table's last column
      "rows": [                     # the accuracy table: one row per evaluation set
        {"eval_set": str,           # e.g. "BLEnD", "CountryRC", "CommonsenseQA (non-cultural)"
         "cultural": bool,          # false for the specificity control
         "n_items": int,
         "original": float,         # accuracy in [0, 1] without inhibition
         "inhibited": float,        # ... with our neurons inhibited
         "random": [float, ...],    # ... with each random set inhibited (mean and sd are taken in the report)
         "p_value": float | null,   # paired bootstrap, H1: inhibited < random (one-sided)
         "metric": str,             # "accuracy" (or "acc_norm", "alignment" ...), shown in the table
         "diff_low", "diff_high": float | null,   # 95% paired bootstrap interval of inhibited - mean(random)
         "mde": float | null,       # smallest drop detectable at 80% power by the same test (power.py)
         "p_holm": float | null}    # Holm-adjusted p-value across the rows (filled by write_report)
      ],
      "verdict": null | {...},      # verdict.Verdict.to_dict(): relative drops, ratio, gap, label
      "sections": [{"title": str, "markdown": str}],   # extra sections (stability, sweep grid), rendered as given
      "kinship": null | {"targets": [str], "groups": [str], "matrix": [[float]]},   # accuracy drops (0-1)
      "layers": null | {"num_layers": int, "counts": {"mlp": [int] * L, "attn": [int] * L}},
      "notes": [str],
      "metadata": {str: str}
    }
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from culnig_ext._utils.atomic import atomic_write_bytes, atomic_write_text
from culnig_ext._utils.textfile import read_json
from culnig_ext.reporting.explorer import DEFAULT_TOP_N, write_explorer
from culnig_ext.reporting.plots import kinship_png, layers_png
from culnig_ext.reporting.tables import accuracy_cells, accuracy_header, pct, verdict_markdown
from culnig_ext.stats.rows import AccuracyRow, accuracy_row, with_holm

REPORT_FORMAT = "culnig-report/1"
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
HTML_FILE = "report.html"
KINSHIP_PNG = "kinship.png"
LAYERS_PNG = "layers.png"


# ------------------------------------------------------------------------------------------- the structure
@dataclass
class ReportResults:
    """Everything the report shows; JSON-serialisable via ``to_dict`` (see the module docstring)."""

    title: str
    model: str
    neuron_set: str
    rows: list[AccuracyRow]
    n_neurons: int | None = None
    alpha: float = 0.05
    kinship: dict[str, Any] | None = None
    layers: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    verdict: dict[str, Any] | None = None
    sections: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "title": self.title,
            "model": self.model,
            "neuron_set": self.neuron_set,
            "n_neurons": self.n_neurons,
            "alpha": self.alpha,
            "rows": [
                {
                    "eval_set": r.eval_set, "cultural": r.cultural, "n_items": r.n_items, "original": r.original,
                    "inhibited": r.inhibited, "random": list(r.random), "p_value": r.p_value, "metric": r.metric,
                    "diff_low": r.diff_low, "diff_high": r.diff_high, "mde": r.mde, "p_holm": r.p_holm,
                }
                for r in self.rows
            ],
            "kinship": self.kinship,
            "layers": self.layers,
            "notes": list(self.notes),
            "metadata": dict(self.metadata),
            "verdict": self.verdict,
            "sections": [dict(x) for x in self.sections],
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], *, where: str = "results") -> "ReportResults":
        """Validate and build; errors name the field (``where: rows[1].original: ...``)."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
        if obj.get("format", REPORT_FORMAT) != REPORT_FORMAT:
            raise ValueError(f"{where}: format {obj.get('format')!r} is not {REPORT_FORMAT!r}")
        for key in ("title", "model", "neuron_set", "rows"):
            if key not in obj:
                raise ValueError(f"{where}: missing field {key!r}")
        rows = [_row(raw, f"{where}: rows[{i}]") for i, raw in enumerate(_list(obj["rows"], f"{where}: rows"))]
        alpha = _number(obj.get("alpha", 0.05), f"{where}: alpha")
        if not 0 < alpha < 1:
            raise ValueError(f"{where}: alpha: must be in (0, 1), got {alpha}")
        n_neurons = obj.get("n_neurons")
        if n_neurons is not None and (not isinstance(n_neurons, int) or isinstance(n_neurons, bool) or n_neurons < 0):
            raise ValueError(f"{where}: n_neurons: expected a non-negative integer or null, got {n_neurons!r}")
        kin = obj.get("kinship")
        if kin is not None:
            kin = _kinship(kin, f"{where}: kinship")
        layers = obj.get("layers")
        if layers is not None:
            layers = _layers(layers, f"{where}: layers")
        verdict = obj.get("verdict")
        if verdict is not None:
            from culnig_ext.stats.verdict import Verdict

            verdict = Verdict.from_dict(verdict, where=f"{where}: verdict").to_dict()
        sections = []
        for i, sec in enumerate(_list(obj.get("sections", []), f"{where}: sections")):
            if not isinstance(sec, Mapping) or not {"title", "markdown"} <= set(sec):
                raise ValueError(f"{where}: sections[{i}]: expected {{'title', 'markdown'}}, got {sec!r}")
            sections.append({"title": str(sec["title"]), "markdown": str(sec["markdown"])})
        return cls(
            title=str(obj["title"]), model=str(obj["model"]), neuron_set=str(obj["neuron_set"]), rows=rows,
            n_neurons=n_neurons, alpha=alpha, kinship=kin, layers=layers, verdict=verdict, sections=sections,
            notes=[str(n) for n in _list(obj.get("notes", []), f"{where}: notes")],
            metadata={str(k): str(v) for k, v in dict(obj.get("metadata", {})).items()},
        )


def _list(value: Any, where: str) -> list:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return list(value)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where}: not finite ({value})")
    return value


def _row(raw: Any, where: str) -> AccuracyRow:
    if isinstance(raw, AccuracyRow):
        raw = {k: getattr(raw, k) for k in AccuracyRow.__dataclass_fields__}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(raw).__name__}")
    for key in ("eval_set", "original", "inhibited", "random", "p_value", "n_items"):
        if key not in raw:
            raise ValueError(f"{where}: missing field {key!r}")
    metric = str(raw.get("metric", "accuracy"))
    # accuracies are shares in [0, 1]; an alignment score is on its own scale (0-100)
    bounded = metric != "alignment"
    values = {}
    for key in ("original", "inhibited"):
        values[key] = _number(raw[key], f"{where}.{key}")
        if bounded and not 0 <= values[key] <= 1:
            raise ValueError(f"{where}.{key}: expected an accuracy in [0, 1], got {values[key]}")
    random = [_number(x, f"{where}.random[{j}]") for j, x in enumerate(_list(raw["random"], f"{where}.random"))]
    if bounded:
        for j, x in enumerate(random):
            if not 0 <= x <= 1:
                raise ValueError(f"{where}.random[{j}]: expected an accuracy in [0, 1], got {x}")
    p = raw["p_value"]
    if p is not None:
        p = _number(p, f"{where}.p_value")
        if not 0 <= p <= 1:
            raise ValueError(f"{where}.p_value: expected a probability, got {p}")
    optional = {}
    for key in ("diff_low", "diff_high", "mde", "p_holm"):
        v = raw.get(key)
        optional[key] = None if v is None else _number(v, f"{where}.{key}")
    if optional["p_holm"] is not None and not 0 <= optional["p_holm"] <= 1:
        raise ValueError(f"{where}.p_holm: expected a probability, got {optional['p_holm']}")
    n_items = raw["n_items"]
    if not isinstance(n_items, (int, np.integer)) or isinstance(n_items, bool) or n_items < 0:
        raise ValueError(f"{where}.n_items: expected a non-negative integer, got {n_items!r}")
    return AccuracyRow(
        eval_set=str(raw["eval_set"]), original=values["original"], inhibited=values["inhibited"], random=random,
        p_value=p, n_items=int(n_items), cultural=bool(raw.get("cultural", True)), metric=metric, **optional,
    )


def _kinship(kin: Any, where: str) -> dict[str, Any]:
    if hasattr(kin, "to_dict") and callable(kin.to_dict):
        kin = kin.to_dict()
    if not isinstance(kin, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(kin).__name__}")
    for key in ("targets", "groups", "matrix"):
        if key not in kin:
            raise ValueError(f"{where}: missing field {key!r}")
    targets = [str(t) for t in _list(kin["targets"], f"{where}.targets")]
    groups = [str(g) for g in _list(kin["groups"], f"{where}.groups")]
    matrix = _list(kin["matrix"], f"{where}.matrix")
    if len(matrix) != len(targets) or not targets or not groups:
        raise ValueError(f"{where}.matrix: expected {len(targets)} rows (one per target), got {len(matrix)}")
    rows = []
    for i, row in enumerate(matrix):
        row = _list(row, f"{where}.matrix[{i}]")
        if len(row) != len(groups):
            raise ValueError(f"{where}.matrix[{i}]: expected {len(groups)} values (one per group), got {len(row)}")
        rows.append([_number(x, f"{where}.matrix[{i}][{j}]") for j, x in enumerate(row)])
    return {"targets": targets, "groups": groups, "matrix": rows}


def _layers(layers: Any, where: str) -> dict[str, Any]:
    if not isinstance(layers, Mapping):
        raise ValueError(f"{where}: expected an object, got {type(layers).__name__}")
    n = layers.get("num_layers")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{where}.num_layers: expected a positive integer, got {n!r}")
    counts = layers.get("counts")
    if not isinstance(counts, Mapping) or set(counts) != {"mlp", "attn"}:
        raise ValueError(f"{where}.counts: expected {{'mlp': [...], 'attn': [...]}}, got {counts!r}")
    out = {}
    for kind in ("mlp", "attn"):
        values = _list(counts[kind], f"{where}.counts.{kind}")
        if len(values) != n:
            raise ValueError(f"{where}.counts.{kind}: expected {n} layers, got {len(values)}")
        for j, v in enumerate(values):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{where}.counts.{kind}[{j}]: expected a non-negative integer, got {v!r}")
        out[kind] = [int(v) for v in values]
    return {"num_layers": n, "counts": out}


# ------------------------------------------------------------------------------------------------ render
def _accuracy_table(res: ReportResults) -> str:
    header = accuracy_header(res.alpha)
    lines = ["| " + " | ".join(header) + " |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in accuracy_cells(res.rows, res.alpha)]
    return "\n".join(lines)


def _kinship_table(kin: dict[str, Any]) -> str:
    groups = kin["groups"]
    lines = ["| Inhibited \\ Evaluated | " + " | ".join(groups) + " |", "|---|" + "---:|" * len(groups)]
    for target, row in zip(kin["targets"], kin["matrix"]):
        lines.append(f"| {target} | " + " | ".join(pct(x) for x in row) + " |")
    return "\n".join(lines)


def render_markdown(res: ReportResults) -> str:
    """The report's Markdown text (images referenced by file name)."""
    parts = [f"# {res.title}", ""]
    parts.append(f"- Model: `{res.model}`")
    size = f" ({res.n_neurons} neurons)" if res.n_neurons is not None else ""
    parts.append(f"- Inhibited set: {res.neuron_set}{size}")
    for key, value in res.metadata.items():
        parts.append(f"- {key}: {value}")
    parts += [
        "",
        "## Accuracy under inhibition",
        "",
        "Accuracies in percent (alignment scores on their 0-100 scale). Random: mean ± sample sd over random "
        "neuron sets of the same size. Ours − random: accuracy difference (points) with its 95% paired bootstrap "
        "interval over items. MDE: the smallest drop below random that this test detects with 80% power "
        "(power.py). p-value: paired bootstrap over items, H1: accuracy with our neurons inhibited is lower than "
        "with random neurons inhibited; Holm p: adjusted across the rows of this table.",
        "",
        _accuracy_table(res),
        "",
    ]
    if res.verdict is not None:
        parts += ["## Specificity verdict", "", verdict_markdown(res.verdict), ""]
    for sec in res.sections:
        parts += [f"## {sec['title']}", "", sec["markdown"].rstrip(), ""]
    if res.kinship is not None:
        parts += [
            "## Cultural kinship",
            "",
            "Accuracy drop (percentage points) of each evaluated group (columns) when each group's neurons (rows) "
            "are inhibited.",
            "",
            f"![kinship heatmap]({KINSHIP_PNG})",
            "",
            _kinship_table(res.kinship),
            "",
        ]
    if res.layers is not None:
        counts = res.layers["counts"]
        parts += [
            "## Layer distribution",
            "",
            f"MLP neurons: {sum(counts['mlp'])}; attention neurons: {sum(counts['attn'])}; "
            f"{res.layers['num_layers']} layers.",
            "",
            f"![layer histogram]({LAYERS_PNG})",
            "",
        ]
    if res.notes:
        parts += ["## Notes", ""] + [f"- {note}" for note in res.notes] + [""]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------------- API
def write_report(run_dir: str | os.PathLike, results: ReportResults | Mapping[str, Any], *, html: bool = True,
                 top_n: int = DEFAULT_TOP_N) -> Path:
    """Write ``results.json``, ``report.md``, the PNG plots and ``report.html`` (the explorer) into ``run_dir``;
    returns the Markdown report's path.

    Args:
        run_dir: the run folder (created if missing).
        results: a ``ReportResults`` or its dict form (validated; errors name the field).
        html: also write ``report.html`` (``reporting.explorer``: reads the folder's neuron sets and score tables).
        top_n: neurons outside the sets that the page's neuron table adds (highest contrast first).
    """
    res = results if isinstance(results, ReportResults) else ReportResults.from_dict(results)
    res = ReportResults.from_dict(res.to_dict())  # the same validation either way
    if any(r.p_value is not None and r.p_holm is None for r in res.rows):
        res.rows = with_holm(res.rows)
    run_dir = Path(run_dir)
    atomic_write_text(run_dir / RESULTS_FILE, json.dumps(res.to_dict(), indent=1, allow_nan=False) + "\n")
    if res.kinship is not None:
        atomic_write_bytes(run_dir / KINSHIP_PNG, kinship_png(res.kinship))
    if res.layers is not None:
        atomic_write_bytes(run_dir / LAYERS_PNG, layers_png(res.layers))
    path = atomic_write_text(run_dir / REPORT_FILE, render_markdown(res))
    if html:
        write_explorer(run_dir, res.to_dict(), top_n=top_n)
    return path


def write_report_from_dir(run_dir: str | os.PathLike, *, html: bool = True, top_n: int = DEFAULT_TOP_N) -> Path:
    """Rebuild the report (and ``report.html``) from ``run_dir/results.json``."""
    return write_report(run_dir, read_results(run_dir), html=html, top_n=top_n)


def read_results(run_dir: str | os.PathLike) -> ReportResults:
    """Read and validate ``run_dir/results.json``; errors name the file, line or field."""
    path = Path(run_dir) / RESULTS_FILE
    try:
        obj = read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no results to report (write_report writes it)") from None
    return ReportResults.from_dict(obj, where=str(path))
