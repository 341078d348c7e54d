"""The instance view as a file: for each culture-general neuron the scoring items on which it scored highest.

``RUN/instance.json`` (format ``culnig-instance/1``), written by the pipeline when the instance view is on and read
by the explorer's neuron card::

    {"format": "culnig-instance/1", "n_items": int,
     "items": [{"id": str, "group": str, "question": str}, ...],     # only the items some neuron lists
     "neurons": {"<site>:<index>": {"positive_share": float,          # share of items with a positive score
                                    "top": [[item position in "items", item score], ...]}}}   # highest first

Item scores are ``scorer.item_scores``: ``max_t a_t * dP/da_t`` on one item (unweighted).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from culnig_ext._utils.atomic import atomic_write_text
from culnig_ext._utils.textfile import read_json

INSTANCE_FORMAT = "culnig-instance/1"
INSTANCE_FILE = "instance.json"


def neuron_key(site: str, index: int) -> str:
    """The key of a neuron in ``instance.json``: ``"<site>:<index>"``."""
    return f"{site}:{index}"


def top_items(neurons, per_item: torch.Tensor, items: Sequence[Any], top: int = 10) -> dict[str, Any]:
    """The instance file's object.

    Args:
        neurons: the neurons (a ``NeuronSet`` or ``Neuron``s), in the column order of ``per_item``.
        per_item: ``Tensor[I, K]`` float, item scores (``scorer.item_scores``).
        items: the ``I`` scored items (``MCItem``: ``id``, ``group``, ``question``).
        top: items kept per neuron.
    """
    neurons = list(neurons)
    scores = torch.as_tensor(per_item, dtype=torch.float64)
    if scores.dim() != 2 or scores.shape != (len(items), len(neurons)):
        raise ValueError(f"per_item must be [items={len(items)}, neurons={len(neurons)}], got {tuple(scores.shape)}")
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    k = min(top, len(items))
    best = torch.topk(scores, k, dim=0) if len(items) else None
    used: dict[int, int] = {}
    out_neurons = {}
    for j, n in enumerate(neurons):
        rows = best.indices[:, j].tolist() if best is not None else []
        vals = best.values[:, j].tolist() if best is not None else []
        listed = [[used.setdefault(r, len(used)), float(v)] for r, v in zip(rows, vals)]
        share = float((scores[:, j] > 0).double().mean()) if len(items) else 0.0
        out_neurons[neuron_key(n.site, n.index)] = {"positive_share": share, "top": listed}
    order = sorted(used, key=used.get)
    return {"format": INSTANCE_FORMAT, "n_items": len(items),
            "items": [{"id": items[r].id, "group": items[r].group, "question": items[r].question} for r in order],
            "neurons": out_neurons}


def write_instance(run_dir: str | os.PathLike, obj: dict[str, Any]) -> Path:
    """Write ``run_dir/instance.json`` atomically."""
    return atomic_write_text(Path(run_dir) / INSTANCE_FILE, json.dumps(obj, ensure_ascii=False, allow_nan=False))


def read_instance(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``run_dir/instance.json`` checked, or None where the run has none; errors name the file and field."""
    path = Path(run_dir) / INSTANCE_FILE
    if not path.is_file():
        return None
    obj = read_json(path)
    if not isinstance(obj, dict) or obj.get("format") != INSTANCE_FORMAT:
        raise ValueError(f"{path}: format: expected {INSTANCE_FORMAT!r}")
    for key in ("items", "neurons"):
        if key not in obj:
            raise ValueError(f"{path}: missing field {key!r}")
    n = len(obj["items"])
    for name, entry in obj["neurons"].items():
        for pos, _ in entry.get("top", []):
            if not isinstance(pos, int) or not 0 <= pos < n:
                raise ValueError(f"{path}: neurons[{name!r}].top: item position {pos!r} outside [0, {n})")
    return obj
