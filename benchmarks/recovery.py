"""The numbers to beat: recovery of planted culture neurons (``culnig plant && culnig validate``).

    python benchmarks/recovery.py                      # the recorded figures (benchmarks/recovery_baseline.json)
    python benchmarks/recovery.py OUT/validation.json  # a new run beside them: which figures beat the record

The record is the demo run of docs/ground_truth.md (SmolLM2-135M-Instruct, the default ``culnig plant`` and
``culnig validate`` options), reduced to its headline figures by ``headline``; a change of the method (scoring,
selection, control, filters) should move these numbers up, on the same planted folder (``culnig plant`` is seeded:
the same options give the same folder). A figure counts as beaten when the new value is above the recorded one
(below, for the negative control's distance from chance).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from culnig_ext._utils.atomic import atomic_write_text

BASELINE = Path(__file__).resolve().parent / "recovery_baseline.json"
FIGURES = ("precision_at_k", "average_precision", "auroc")


def headline(fig: dict) -> dict:
    """The figures that matter, from a ``validation.json``: per method, all-countries and mean per-country ranking
    figures, the selected sets' recall, and the negative control's CULNIG AUROC."""
    out: dict = {"methods": {}}
    for method, by in fig["ranking"].items():
        row = {f"general_{f}": by["general"][f] for f in FIGURES}
        row.update({f"specific_{f}": by["specific_mean"][f] for f in FIGURES})
        sets = fig.get("sets", {}).get(method)
        if sets:
            row["general_set_recall"] = sets["general"]["recall"]
            row["specific_set_recall"] = sets["specific_recall_mean"]
        out["methods"][method] = row
    neg = fig.get("negative_control")
    if neg:
        out["negative_control_auroc"] = {m: by["general"]["auroc"] for m, by in neg["ranking"].items()}
    out["accuracy_after_planting"] = (fig.get("planted", {}).get("accuracy_after") or {}).get("accuracy")
    return out


def table(head: dict, other: dict | None = None) -> str:
    cols = list(next(iter(head["methods"].values())))
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for method, row in head["methods"].items():
        cells = []
        for c in cols:
            cell = f"{row[c]:.3f}"
            if other is not None and method in other["methods"] and c in other["methods"][method]:
                new = other["methods"][method][c]
                cell = f"{new:.3f} ({'beats' if new > row[c] else 'ties' if new == row[c] else 'below'} {row[c]:.3f})"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    neg = head.get("negative_control_auroc")
    if neg:
        lines.append("")
        lines.append("negative control (unplanted base model), AUROC: " + ", ".join(f"{m} {v:.3f}" for m, v in neg.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("validation", nargs="?", help="a validation.json to compare with the record")
    ap.add_argument("--record", action="store_true", help="write the given validation.json's figures as the record")
    args = ap.parse_args(argv)
    if args.record:
        if not args.validation:
            ap.error("--record needs a validation.json")
        head = headline(json.loads(Path(args.validation).read_text(encoding="utf-8")))
        atomic_write_text(BASELINE, json.dumps(head, indent=1) + "\n")
        print(f"recorded {args.validation} into {BASELINE}")
        return 0
    base = json.loads(BASELINE.read_text(encoding="utf-8"))
    other = headline(json.loads(Path(args.validation).read_text(encoding="utf-8"))) if args.validation else None
    print(table(base, other))
    return 0


if __name__ == "__main__":
    sys.exit(main())
