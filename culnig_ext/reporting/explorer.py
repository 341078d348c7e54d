"""``report.html``: one self-contained page per run folder (the explorer), written beside ``report.md``.

The page needs no network: Plotly (``plotly.min.js`` from the ``plotly`` package), the page's script and style and
all data are inline, so it opens from ``file://`` and can be attached to a supplement. It holds the accuracy table
(intervals, MDE, Holm, verdict), the report's sections (study size, stability with a figure), an interactive
layer map (neurons per layer and kind, per set), the kinship heatmap with hover values, a sortable, filterable,
paged neuron table (``neuron_table.neuron_rows``) with a neuron card on click (per-group scores as bars, z-scores,
the items it scored highest on from ``instance.json``), and the run's config and provenance.

What it reads from the folder (each optional but ``results.json``): ``config.json``, ``neurons/general.json``,
``neurons/specific/*.json``, ``scores/{neur,ctrl,crc}.safetensors`` and ``instance.json``.
"""
from __future__ import annotations

import html
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from culnig_ext._utils.atomic import atomic_write_text
from culnig_ext._utils.textfile import read_json
from culnig_ext._utils.version import __version__
from culnig_ext.reporting.analysis import layer_counts
from culnig_ext.reporting.instance import read_instance
from culnig_ext.reporting.neuron_table import neuron_rows
from culnig_ext.reporting.tables import accuracy_cells, accuracy_header, verdict_markdown
from culnig_ext.scoring.table import ScoreTable
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.stats.rows import AccuracyRow

HTML_FILE = "report.html"
DEFAULT_TOP_N = 1000
DATA_ID = "culnig-data"


# ---------------------------------------------------------------------------------------------- reading
def load_sets(run_dir: Path) -> tuple[NeuronSet | None, dict[str, NeuronSet]]:
    """The folder's general set (or None) and its specific sets by group (``params.group``, else the file stem)."""
    general_path = run_dir / "neurons" / "general.json"
    general = NeuronSet.load(general_path) if general_path.is_file() else None
    specific = {}
    for path in sorted((run_dir / "neurons" / "specific").glob("*.json")):
        ns = NeuronSet.load(path)
        specific[str(ns.params.get("group", path.stem))] = ns
    return general, specific


def load_tables(run_dir: Path) -> dict[str, ScoreTable | None]:
    """``{"neur", "ctrl", "crc"}`` summed score tables of ``run_dir/scores`` (None where absent)."""
    return {role: ScoreTable.load(run_dir / "scores" / f"{role}.safetensors")
            if (run_dir / "scores" / f"{role}.safetensors").is_file() else None for role in ("neur", "ctrl", "crc")}


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/config.json`` or None; errors name the file and line."""
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    return read_json(path)


# ------------------------------------------------------------------------------------------ markdown bits
def markdown_blocks(text: str) -> list[dict[str, Any]]:
    """A report section's Markdown as blocks: ``{"kind": "table", "header": [...], "rows": [[...]]}`` for pipe
    tables, ``{"kind": "text", "text": str}`` for paragraphs (the sections hold only these two)."""
    blocks: list[dict[str, Any]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|[\s:|-]+\|", lines[i + 1].strip()):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            blocks.append({"kind": "table", "header": header, "rows": rows})
            continue
        if line:
            if blocks and blocks[-1]["kind"] == "text" and lines[i - 1].strip():
                blocks[-1]["text"] += " " + line
            else:
                blocks.append({"kind": "text", "text": line})
        i += 1
    return blocks


def inline_html(text: str) -> str:
    """Escape, then ``**bold**`` and ``code``."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def table_html(header: list[str], rows: list[list[str]], table_id: str = "") -> str:
    """A plain HTML table of already formatted cells."""
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{inline_html(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def blocks_html(blocks: list[dict[str, Any]]) -> str:
    return "\n".join(table_html(b["header"], b["rows"]) if b["kind"] == "table" else f"<p>{inline_html(b['text'])}</p>"
                     for b in blocks)


def stability_rows(sections: list[dict[str, str]]) -> list[dict[str, Any]] | None:
    """The stability section's table as ``[{"scope", "split_half", "chance", "boot_mean", "boot_min"}]`` for the
    figure (from ``Stability.to_markdown``'s columns), or None where the report has none."""
    for sec in sections:
        if not sec["title"].lower().startswith("stability"):
            continue
        for block in markdown_blocks(sec["markdown"]):
            if block["kind"] != "table" or "split-half Jaccard" not in block["header"]:
                continue
            col = {name: j for j, name in enumerate(block["header"])}

            def num(row, name):
                cell = row[col[name]] if name in col else "–"
                return None if cell in ("–", "") else float(cell)
            return [{"scope": r[0], "split_half": num(r, "split-half Jaccard"), "chance": num(r, "chance"),
                     "boot_mean": num(r, "bootstrap Jaccard (mean)"), "boot_min": num(r, "bootstrap Jaccard (min)")}
                    for r in block["rows"]]
    return None


# ------------------------------------------------------------------------------------------------ the data
def _layer_map(results: Mapping[str, Any], general, specific, num_layers: int | None) -> dict[str, Any] | None:
    """Neurons per layer and kind, per set: the general set and all specific sets together."""
    if num_layers is None:
        sites = [n.site for ns in ([general] if general else []) + list(specific.values()) for n in ns]
        if not sites:
            return None
        from culnig_ext.models.sites import parse_site_name

        num_layers = 1 + max(parse_site_name(s)[0] for s in sites)
    sets = {}
    if general is not None:
        sets["culture-general"] = layer_counts(general, num_layers)
    elif results.get("layers"):
        sets["inhibited set"] = results["layers"]["counts"]
    if specific:
        sets["culture-specific (all groups)"] = layer_counts([n for ns in specific.values() for n in ns], num_layers)
    return {"num_layers": num_layers, "sets": sets} if sets else None


def page_data(run_dir: str | os.PathLike, results: Mapping[str, Any], *, top_n: int = DEFAULT_TOP_N) -> dict:
    """Everything the page's script draws, as one JSON-ready dict (``results``: ``ReportResults.to_dict()``)."""
    run_dir = Path(run_dir)
    general, specific = load_sets(run_dir)
    tables = load_tables(run_dir)
    normalize = str(general.params.get("normalize", "count")) if general is not None else "count"
    neurons = neuron_rows(tables["neur"], tables["ctrl"], tables["crc"], general, specific, top_n=top_n,
                          normalize=normalize, specific_normalize="prob" if normalize == "prob" else "total")
    num_layers = results["layers"]["num_layers"] if results.get("layers") else None
    provenance = {"culnig_ext": __version__, "model": results.get("model"), **dict(results.get("metadata", {}))}
    for name, ns in (("general", general), *specific.items()):
        if ns is not None:
            provenance[f"neurons {name}: sources"] = ", ".join(f"{k} {v}" for k, v in ns.sources.items())
    if tables["neur"] is not None:
        provenance.update({f"scores {k}": str(v) for k, v in tables["neur"].metadata.items()})
    return {"title": results["title"], "kinship": results.get("kinship"),
            "layers": _layer_map(results, general, specific, num_layers),
            "stability": stability_rows(results.get("sections", [])), "neurons": neurons,
            "instance": read_instance(run_dir), "provenance": provenance, "config": read_config(run_dir)}


# --------------------------------------------------------------------------------------------------- render
def _asset(name: str) -> str:
    return resources.files("culnig_ext.reporting").joinpath("assets", name).read_text(encoding="utf-8")


def plotly_js() -> str:
    """The bundled ``plotly.min.js`` of the installed ``plotly`` package (requirements.txt pins it)."""
    try:
        from plotly.offline import get_plotlyjs
    except ImportError as exc:
        raise ImportError("report.html needs plotly (pip install -r requirements.txt)") from exc
    return get_plotlyjs()


def _script_json(obj: Any) -> str:
    """JSON safe inside ``<script>``: no ``</`` and no ``<!--`` can end or open anything."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")


def _static_sections(results: Mapping[str, Any]) -> str:
    """The accuracy table, the verdict, the report's sections and notes, as HTML."""
    rows = [AccuracyRow(**{k: r[k] for k in AccuracyRow.__dataclass_fields__ if k in r}) for r in results["rows"]]
    parts = ["<section id='accuracy'><h2>Accuracy under inhibition</h2>",
             "<p>Accuracies in percent (alignment scores on their 0-100 scale). Random: mean ± sample sd over random "
             "sets of the same size; ours − random with its 95% paired bootstrap interval; MDE at 80% power; "
             "p-value: paired bootstrap, one-sided; Holm p across the rows.</p>",
             table_html(accuracy_header(float(results.get("alpha", 0.05))),
                        accuracy_cells(rows, float(results.get("alpha", 0.05))), "accuracy-table"), "</section>"]
    verdict = results.get("verdict")
    if verdict is not None:
        parts += ["<section id='verdict'><h2>Specificity verdict</h2>", blocks_html(markdown_blocks(
            verdict_markdown(verdict))), "</section>"]
    for k, sec in enumerate(results.get("sections", [])):
        parts += [f"<section id='section-{k}'><h2>{html.escape(sec['title'])}</h2>",
                  blocks_html(markdown_blocks(sec["markdown"]))]
        if sec["title"].lower().startswith("stability"):
            parts.append("<div id='stability-plot' class='plot'></div>")
        parts.append("</section>")
    if results.get("notes"):
        parts += ["<section id='notes'><h2>Notes</h2><ul>"] + [f"<li>{inline_html(n)}</li>" for n in results["notes"]]
        parts.append("</ul></section>")
    return "\n".join(parts)


def render_page(results: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """The whole page (``results``: ``ReportResults.to_dict()``; ``data``: ``page_data``)."""
    head = (f"<p>Model: <code>{html.escape(str(results['model']))}</code> · inhibited set: "
            f"{html.escape(str(results['neuron_set']))}"
            + (f" ({results['n_neurons']} neurons)" if results.get("n_neurons") is not None else "") + "</p>")
    return "\n".join([
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(str(results['title']))}</title>", f"<style>{_asset('explorer.css')}</style>",
        f"<script>{plotly_js()}</script>", "</head><body>", f"<h1>{html.escape(str(results['title']))}</h1>", head,
        "<nav><a href='#accuracy'>accuracy</a> <a href='#layers'>layer map</a> <a href='#kinship'>kinship</a> "
        "<a href='#neurons'>neurons</a> <a href='#config'>config</a></nav>",
        _static_sections(results), _asset("explorer.html"),
        f"<script type='application/json' id='{DATA_ID}'>{_script_json(data)}</script>",
        f"<script>{_asset('explorer.js')}</script>", "</body></html>", ""])


def write_explorer(run_dir: str | os.PathLike, results: Mapping[str, Any], *, top_n: int = DEFAULT_TOP_N) -> Path:
    """Write ``run_dir/report.html`` atomically from ``results`` (``ReportResults.to_dict()``) and the folder's
    neuron sets, score tables, config and instance view; returns its path."""
    run_dir = Path(run_dir)
    return atomic_write_text(run_dir / HTML_FILE, render_page(results, page_data(run_dir, results, top_n=top_n)))
