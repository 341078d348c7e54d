"""The module study's report: a table (rows top / bottom / random; columns target gain and the drop on each
evaluation set, with paired-bootstrap intervals) and a plot of the layers each end trained.

Everything shown comes from the study's results dict (``finetune_study.StudyResults.to_dict``), saved beside the
report as ``finetune_results.json``; ``write_finetune_report`` writes ``finetune_results.json``, ``finetune.md`` and
``finetune_layers.png`` atomically.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from culnig_ext._utils.atomic import atomic_write_bytes, atomic_write_text
from culnig_ext.reporting.markdown_page import write_markdown_page
from culnig_ext.reporting.plots import png_bytes

RESULTS_FILE = "finetune_results.json"
REPORT_FILE = "finetune.md"
LAYERS_PNG = "finetune_layers.png"
STUDY_FORMAT = "culnig-finetune/1"


def _pp(x: float) -> str:
    return f"{100.0 * x:+.2f}"


def _interval(b: Mapping[str, Any]) -> str:
    """``+d [lo, hi]`` in percentage points, from a ``BootstrapResult`` dict."""
    return f"{_pp(b['diff'])} [{_pp(b['ci_low'])}, {_pp(b['ci_high'])}]"


def study_table(results: Mapping[str, Any]) -> str:
    """The Markdown table of the study (one row per end)."""
    sets = list(results["eval_sets"])
    target = results["target"]
    head = ["End", "Blocks (MLP / attn)", "Share of decoder params", "Culture neurons in blocks",
            f"{target['name']}: before → after", "Target gain [95% CI]"]
    head += [f"{name} drop [95% CI]" for name in sets]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for end in results["ends"]:
        kinds = [b["kind"] for b in end["pick"]["blocks"]]
        row = [
            end["end"],
            f"{kinds.count('mlp')} / {kinds.count('attn')}",
            f"{100.0 * end['pick']['share']:.2f}%",
            str(sum(b["count"] for b in end["pick"]["blocks"])),
            f"{100.0 * target['before']:.2f} → {100.0 * end['target_after']:.2f}",
            _interval(end["target_gain"]),
        ]
        row += [_interval(end["drops"][name]) for name in sets]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def layers_png(results: Mapping[str, Any]) -> bytes:
    """A grid: one row per (end, kind), one column per layer, filled where the end trained that block."""
    from matplotlib.figure import Figure

    n = int(results["num_layers"])
    ends = results["ends"]
    grid = np.zeros((2 * len(ends), n))
    labels = []
    for e, end in enumerate(ends):
        for k, kind in enumerate(("mlp", "attn")):
            grid[2 * e + k] = end["layers"][kind]
            labels.append(f"{end['end']}: {'MLP' if kind == 'mlp' else 'attention'}")
    fig = Figure(figsize=(max(4.0, 0.25 * n + 2.5), 0.45 * len(labels) + 1.2))
    ax = fig.add_subplot()
    ax.imshow(grid, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=7)
    ax.set_xlabel("layer")
    for y in range(2, len(labels), 2):
        ax.axhline(y - 0.5, color="tab:red", linewidth=1)
    ax.set_title("Blocks each end trained (filled = trained)")
    return png_bytes(fig)


def render_markdown(results: Mapping[str, Any]) -> str:
    """The study's Markdown page."""
    target = results["target"]
    parts = [f"# Module study: {results['model']}", ""]
    parts.append(f"- Neurons ranking the blocks: {results['neurons']} ({results['n_neurons']} neurons)")
    parts.append(f"- Target task: {target['name']} ({target['n_train']} training items, {target['n_items']} test "
                 f"items, {target['format']} scoring)")
    parts.append(f"- Training: {results['mode']}, budget {results['budget']:g} of the decoder layers' "
                 f"parameters, blocks ranked by {results['by']}")
    for key, value in results.get("metadata", {}).items():
        parts.append(f"- {key}: {value}")
    parts += [
        "",
        "## Target gain and what is kept",
        "",
        "Each end is fine-tuned from the same start. Percentage points; 95% paired-bootstrap intervals over items. "
        "Target gain = accuracy after − before on the target task's test items; drop = accuracy before − after "
        "(positive: the fine-tuning cost that ability).",
        "",
        study_table(results),
        "",
        "Accuracy before fine-tuning: "
        + ", ".join(f"{name} {100.0 * acc:.2f}" for name, acc in results["before"].items())
        + f"; {target['name']} {100.0 * target['before']:.2f}.",
        "",
        f"![layers each end trained]({LAYERS_PNG})",
        "",
        "## Picks",
        "",
    ]
    for end in results["ends"]:
        pick = end["pick"]
        blocks = ", ".join(f"{b['name']} ({b['count']})" for b in pick["blocks"])
        train = end["train"]
        loss = train["losses"]
        loss_text = f"loss {loss[0]:.4f} → {loss[-1]:.4f}" if loss else "no steps"
        parts.append(f"- **{end['end']}**: {blocks}; {train['steps']} optimizer steps, {loss_text}, "
                     f"{train['seconds']:.0f} s")
    parts += ["", f"Ties: {results['ends'][0]['pick']['tie_rule']}." if results["ends"] else "", ""]
    if results.get("notes"):
        parts += ["## Notes", ""] + [f"- {note}" for note in results["notes"]] + [""]
    return "\n".join(parts)


def write_finetune_report(out_dir: str | os.PathLike, results: Mapping[str, Any]) -> Path:
    """Write ``finetune_results.json``, ``finetune.md`` and ``finetune_layers.png`` into ``out_dir``; returns the
    report's path."""
    if results.get("format") != STUDY_FORMAT:
        raise ValueError(f"not a module-study result (format {results.get('format')!r}, expected {STUDY_FORMAT!r})")
    out = Path(out_dir)
    atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=1, allow_nan=False) + "\n")
    atomic_write_bytes(out / LAYERS_PNG, layers_png(results))
    path = atomic_write_text(out / REPORT_FILE, render_markdown(results))
    write_markdown_page(out, REPORT_FILE)
    return path


__all__ = ["LAYERS_PNG", "REPORT_FILE", "RESULTS_FILE", "STUDY_FORMAT", "layers_png", "render_markdown",
           "study_table", "write_finetune_report"]
