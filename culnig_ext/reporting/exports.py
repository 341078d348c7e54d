"""Exports of a run folder: one tidy table (parquet or CSV) and Neuronpedia-shaped JSON.

**Tidy table** (``export_tidy``): the long format of ``culnig_ext.data.frames`` with a ``source`` column in front::

    source | site | layer | kind | index | group | score

``source`` says where a row comes from: ``scores/neur``, ``scores/ctrl``, ``scores/crc`` (one row per site, neuron and
group; ``score`` the summed score, as ``ScoreTable.to_pandas()``), ``neurons/general`` and
``neurons/specific/<group>`` (one row per neuron of the set; ``group`` the set's group, empty for the general set).
What pandas' ``attrs`` would hold (groups, item counts, summed P, metadata and item-id hashes of a table; method,
params, model and sources of a set) goes to a sidecar ``<file>.meta.json``, so that ``read_tidy`` rebuilds every
``ScoreTable`` and ``NeuronSet`` exactly (CSV floats are written in their shortest round-trip form).

**Neuronpedia** (``neuronpedia_export``): the row shapes of Neuronpedia's exports (``features/``, ``activations/``,
``explanations/`` batches; fields as in their database schema), one document
``{"format", "features": [...], "activations": [...], "explanations": [...]}`` validated by ``neuronpedia.schema.json``
(``assets/``). docs/explorer.md lists which fields we fill and how.
"""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import torch

from culnig_ext._utils.atomic import atomic_write, atomic_write_text
from culnig_ext._utils.names import slug
from culnig_ext._utils.textfile import read_json
from culnig_ext.data.frames import COLUMNS
from culnig_ext.models.sites import parse_site_name
from culnig_ext.reporting.explorer import load_sets, load_tables
from culnig_ext.reporting.instance import neuron_key, read_instance
from culnig_ext.scoring.table import ScoreTable
from culnig_ext.selection.neurons import NeuronSet

EXPORT_FORMAT = "culnig-export/1"
NEURONPEDIA_FORMAT = "culnig-neuronpedia/1"
TIDY_COLUMNS = ["source"] + COLUMNS
FORMATS = ("parquet", "csv", "neuronpedia")


def _pd():
    import pandas

    return pandas


# ------------------------------------------------------------------------------------------------- tidy
def tidy_frames(run_dir: str | os.PathLike) -> tuple[Any, dict[str, Any]]:
    """``(DataFrame with TIDY_COLUMNS, sidecar dict)`` of a run folder's score tables and neuron sets."""
    pd = _pd()
    run_dir = Path(run_dir)
    parts, sources = [], {}
    for role, table in load_tables(run_dir).items():
        if table is None:
            continue
        df = table.to_pandas()
        sources[f"scores/{role}"] = {"type": "ScoreTable", "groups": df.attrs["groups"], "counts": df.attrs["counts"],
                                     "prob_sums": df.attrs["prob_sums"], "metadata": df.attrs["metadata"],
                                     "item_hashes": None if table.item_hashes is None else table.item_hashes.tolist()}
        parts.append(df.assign(source=f"scores/{role}"))
    general, specific = load_sets(run_dir)
    sets = ([("neurons/general", general)] if general is not None else [])
    sets += [(f"neurons/specific/{slug(g)}", ns) for g, ns in specific.items()]
    for name, ns in sets:
        df = ns.to_pandas()
        sources[name] = {"type": "NeuronSet", **{k: df.attrs[k] for k in ("method", "params", "model", "sources")}}
        parts.append(df.assign(source=name))
    if not parts:
        raise FileNotFoundError(f"{run_dir}: no score tables (scores/*.safetensors) or neuron sets (neurons/) "
                                "to export")
    frame = pd.concat(parts, ignore_index=True)[TIDY_COLUMNS]
    frame.attrs = {}
    return frame, {"format": EXPORT_FORMAT, "columns": TIDY_COLUMNS, "sources": sources}


def export_tidy(run_dir: str | os.PathLike, out: str | os.PathLike, fmt: str = "parquet") -> tuple[Path, Path]:
    """Write the tidy table to ``out`` (``fmt``: ``"parquet"`` or ``"csv"``) and its sidecar ``out.meta.json``,
    atomically; returns both paths."""
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"tidy export format must be 'parquet' or 'csv', got {fmt!r}")
    frame, meta = tidy_frames(run_dir)
    out = Path(out)
    if fmt == "parquet":
        atomic_write(out, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        atomic_write(out, lambda tmp: frame.to_csv(tmp, index=False))
    side = atomic_write_text(sidecar(out), json.dumps(meta, indent=1, allow_nan=False) + "\n")
    return out, side


def sidecar(path: str | os.PathLike) -> Path:
    """The sidecar file of an exported table: ``<path>.meta.json``."""
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def read_tidy(path: str | os.PathLike) -> dict[str, ScoreTable | NeuronSet]:
    """The ``ScoreTable``s and ``NeuronSet``s of an exported tidy table (parquet or CSV, by its suffix) and its
    sidecar, keyed by ``source``; errors name the file and the source."""
    pd = _pd()
    path = Path(path)
    meta_path = sidecar(path)
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: the export's sidecar is missing (export_tidy writes it)")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{meta_path}: format: expected {EXPORT_FORMAT!r}")
    if path.suffix == ".csv":
        # pandas 3 parses floats exactly by default (and deprecates the option); pandas 2 needs "round_trip"
        exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
        frame = pd.read_csv(path, dtype={"source": str, "site": str, "kind": str, "group": str},
                            keep_default_na=False, **exact)
    else:
        frame = pd.read_parquet(path)
    missing = [c for c in TIDY_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: lacks column(s) {missing}; expected {TIDY_COLUMNS}")
    out: dict[str, ScoreTable | NeuronSet] = {}
    for name, info in meta["sources"].items():
        part = frame[frame["source"] == name].drop(columns="source").reset_index(drop=True)
        try:
            out[name] = _rebuild(part, info)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}: source {name!r}: {exc}") from exc
    return out


def _rebuild(part, info: Mapping[str, Any]) -> ScoreTable | NeuronSet:
    if info["type"] == "NeuronSet":
        part.attrs = {k: info[k] for k in ("method", "params", "model", "sources")}
        return NeuronSet.from_pandas(part)
    part.attrs = {"groups": info["groups"], "counts": info["counts"], "prob_sums": info["prob_sums"],
                  "metadata": info["metadata"], "normalize": None}
    table = ScoreTable.from_pandas(part)
    hashes = info.get("item_hashes")
    if hashes is None:
        return table
    return ScoreTable(table.groups, table.counts, table.table, table.prob_sums, table.metadata,
                      item_hashes=torch.tensor(hashes, dtype=torch.int64))


# ------------------------------------------------------------------------------------------- neuronpedia
def neuronpedia_source(site: str) -> str:
    """A site as a Neuronpedia source id (their ``layer`` field): ``layers.3.mlp.gate_proj`` -> ``3-culnig-gate``,
    ``layers.3.self_attn.q_proj`` -> ``3-culnig-q`` (one source per layer and projection: indices stay unique)."""
    layer, _ = parse_site_name(site)
    proj = site.split(".", 2)[2].replace("mlp.", "").replace("self_attn.", "").replace("_proj", "")
    return f"{layer}-culnig-{proj.replace('.', '-')}"


def model_id(name: str) -> str:
    """A model name as a Neuronpedia model id (lower case letters, digits, ``-`` and ``_``)."""
    return slug(name.rsplit("/", 1)[-1]) or "model"


def _description(key, in_general: bool, groups: list[str]) -> str:
    parts = (["culture-general"] if in_general else []) + [f"culture-specific ({g})" for g in groups]
    return "CULNIG: " + ", ".join(parts) + " neuron"


def neuronpedia_export(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The Neuronpedia-shaped document of a run folder's neuron sets (general and specific; every neuron once),
    with the instance view's items as activation records where the run has ``instance.json``."""
    run_dir = Path(run_dir)
    general, specific = load_sets(run_dir)
    if general is None and not specific:
        raise FileNotFoundError(f"{run_dir}: no neuron sets (neurons/general.json, neurons/specific/*.json)")
    model = model_id((general or next(iter(specific.values()))).model or "model")
    instance = read_instance(run_dir)
    neurons: dict[tuple[str, int], dict[str, Any]] = {}
    for name, ns in ([("general", general)] if general is not None else []) + list(specific.items()):
        for n in ns:
            entry = neurons.setdefault((n.site, n.index), {"general": None, "specific": {}})
            if name == "general" and ns is general:
                entry["general"] = n.score
            else:
                entry["specific"][name] = n.score
    features, activations, explanations = [], [], []
    for (site, index), entry in neurons.items():
        ident = {"modelId": model, "layer": neuronpedia_source(site), "index": str(index)}
        inst = instance["neurons"].get(neuron_key(site, index)) if instance else None
        top = inst["top"] if inst else []
        features.append({**ident, "maxActApprox": max((v for _, v in top), default=0.0),
                         "frac_nonzero": inst["positive_share"] if inst else 0.0,
                         "culnig": {"site": site, "index": index, "general_score": entry["general"],
                                    "specific_scores": entry["specific"]}})
        for pos, value in top:
            item = instance["items"][pos]
            activations.append({**ident, "tokens": [item["question"]], "values": [value], "maxValue": value,
                                "maxValueTokenIndex": 0, "minValue": value, "dataIndex": item["id"],
                                "dataSource": f"culnig:{item['group']}"})
        explanations.append({**ident, "description": _description(site, entry["general"] is not None,
                                                                  sorted(entry["specific"])),
                             "authorId": "culnig_ext", "typeName": "culnig-selection",
                             "explanationModelName": None})
    return {"format": NEURONPEDIA_FORMAT, "features": features, "activations": activations,
            "explanations": explanations}


def neuronpedia_schema() -> dict[str, Any]:
    """The JSON schema of ``neuronpedia_export``'s document (``assets/neuronpedia.schema.json``)."""
    text = resources.files("culnig_ext.reporting").joinpath("assets", "neuronpedia.schema.json").read_text("utf-8")
    return json.loads(text)


def export_neuronpedia(run_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write ``neuronpedia_export(run_dir)`` to ``out`` atomically."""
    doc = neuronpedia_export(run_dir)
    return atomic_write_text(out, json.dumps(doc, ensure_ascii=False, indent=1, allow_nan=False) + "\n")


def export_run(run_dir: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None) -> list[Path]:
    """``culnig export``: ``fmt`` one of ``FORMATS``; ``out`` defaults to ``RUN/export/neurons.<ext>`` (or
    ``neuronpedia.json``). Returns the files written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "neuronpedia":
        return [export_neuronpedia(run_dir, out or run_dir / "export" / "neuronpedia.json")]
    return list(export_tidy(run_dir, out or run_dir / "export" / f"neurons.{fmt}", fmt))
