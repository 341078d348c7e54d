"""Results as data: score tables, neuron sets and evaluation results as pandas DataFrames (and xarray), and back.

Long format, one row per neuron and group, with the columns every result shares::

    site | layer | kind | index | group | score

``ScoreTable`` -> one row per (site, neuron, group), ``score`` the summed score (``normalize=`` divides it, as
``ScoreTable.normalizer`` does); the counts, summed probabilities, groups and metadata ride along in ``df.attrs`` so
``table_from_pandas`` rebuilds the table exactly. ``NeuronSet`` -> one row per neuron (``group``: the group a
specific set was chosen for, else empty). ``EvalResult`` -> one row per item record. The classes expose these as
``to_pandas()`` / ``from_pandas()`` methods and ``_repr_html_`` for notebooks; the conversions live here, in one
place, so that pandas is imported only when asked for. They sit low in the house (below the types) and take
the type to build as an argument, so that nothing here imports the types back.
"""
from __future__ import annotations

import html
from typing import Any

import numpy as np
import torch

COLUMNS = ["site", "layer", "kind", "index", "group", "score"]


def _pd():
    import pandas

    return pandas


# ------------------------------------------------------------------------------------------- ScoreTable
def table_to_pandas(table, normalize: str | None = None):
    """``ScoreTable`` -> long DataFrame (``COLUMNS``); ``normalize`` ("count", "prob", "none") divides each group's
    scores by ``table.normalizer(normalize)``; None keeps the sums (and lets ``table_from_pandas`` invert it)."""
    from culnig_ext.models.sites import parse_site_name

    pd = _pd()
    divisor = table.normalizer(normalize).numpy() if normalize is not None else None
    parts = []
    for site in table.sites:
        values = table[site].numpy()
        if divisor is not None:
            values = values / divisor[:, None]
        g, n = values.shape
        layer, kind = parse_site_name(site)
        parts.append(pd.DataFrame({
            "site": np.repeat(np.array([site], dtype=object), g * n),
            "layer": np.full(g * n, layer, dtype=np.int64),
            "kind": np.repeat(np.array([kind], dtype=object), g * n),
            "index": np.tile(np.arange(n, dtype=np.int64), g),
            "group": np.repeat(np.array(table.groups, dtype=object), n),
            "score": values.reshape(-1),
        }))
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in COLUMNS})
    for col in ("site", "kind", "group"):
        df[col] = df[col].astype(object)
    df.attrs.update(
        groups=list(table.groups),
        counts=dict(zip(table.groups, table.counts.tolist())),
        prob_sums=dict(zip(table.groups, table.prob_sums.tolist())),
        metadata=dict(table.metadata),
        normalize=normalize,
    )
    return df


def table_from_pandas(df, cls):
    """The inverse of ``table_to_pandas(table)`` (sums, not normalised): needs ``df.attrs`` as written there and
    every (site, group, index) row; refuses a gap naming the site. ``cls`` is the table type (``ScoreTable``)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"DataFrame lacks column(s) {missing}; expected {COLUMNS}")
    attrs = df.attrs
    if attrs.get("normalize") is not None:
        raise ValueError(f"the DataFrame holds scores normalised by {attrs['normalize']!r}; only sums convert back")
    if "groups" not in attrs or "counts" not in attrs:
        raise ValueError("DataFrame.attrs lacks 'groups'/'counts' (write it with ScoreTable.to_pandas())")
    groups = list(attrs["groups"])
    rows = {g: i for i, g in enumerate(groups)}
    sums = {}
    for site, part in df.groupby("site", sort=False):
        width = int(part["index"].max()) + 1
        if len(part) != width * len(groups) or part.duplicated(["group", "index"]).any():
            raise ValueError(f"site {site!r}: expected one row per group and neuron ({len(groups)} x {width}), "
                             f"got {len(part)} rows")
        unknown = set(part["group"]) - set(rows)
        if unknown:
            raise ValueError(f"site {site!r}: group(s) {sorted(unknown)} not in attrs['groups']")
        values = torch.zeros(len(groups), width, dtype=torch.float64)
        group_rows = torch.from_numpy(part["group"].map(rows).to_numpy(dtype=np.int64, copy=True))
        index = torch.from_numpy(part["index"].to_numpy(dtype=np.int64, copy=True))
        values[group_rows, index] = torch.from_numpy(part["score"].to_numpy(dtype=np.float64, copy=True))
        sums[site] = values
    counts = [int(attrs["counts"][g]) for g in groups]
    prob_sums = [float(attrs.get("prob_sums", {}).get(g, 0.0)) for g in groups]
    return cls(groups, counts, sums, prob_sums, attrs.get("metadata", {}))


def table_to_xarray(table, normalize: str | None = None):
    """``ScoreTable`` -> ``xarray.Dataset``: one variable per site, dims ``("group", "<site>/index")``, plus
    ``counts`` and ``prob_sums`` over ``group``; metadata in ``attrs``. Needs xarray (``pip install xarray``)."""
    try:
        import xarray as xr
    except ImportError as exc:
        raise ImportError("ScoreTable.to_xarray needs xarray: pip install xarray") from exc
    divisor = table.normalizer(normalize).numpy() if normalize is not None else None
    data = {}
    for site in table.sites:
        values = table[site].numpy()
        data[site] = (("group", f"{site}/index"), values / divisor[:, None] if divisor is not None else values)
    data["counts"] = (("group",), table.counts.numpy())
    data["prob_sums"] = (("group",), table.prob_sums.numpy())
    return xr.Dataset(data, coords={"group": list(table.groups)}, attrs=dict(table.metadata))


def table_html(table) -> str:
    """A short HTML summary of a table for notebooks: groups with counts, sites, and the top neurons."""
    pd = _pd()
    head = pd.DataFrame({"group": table.groups, "items": table.counts.tolist(), "summed P": table.prob_sums.tolist()})
    n = sum(t.shape[1] for t in table.table.values())
    return (f"<p><b>ScoreTable</b> {html.escape(table.metadata.get('model', ''))}: {len(table.groups)} groups, "
            f"{table.num_items} items, {len(table.sites)} sites, {n} neurons</p>" + head.to_html(index=False))


# ------------------------------------------------------------------------------------------- NeuronSet
def neurons_to_pandas(neurons):
    """``NeuronSet`` -> long DataFrame (``COLUMNS``), one row per neuron in set order; ``attrs``: method, params,
    model, sources."""
    from culnig_ext.models.sites import parse_site_name

    pd = _pd()
    group = str(neurons.params.get("group", ""))
    rows = []
    for n in neurons:
        layer, kind = parse_site_name(n.site)
        rows.append((n.site, layer, kind, n.index, group, n.score))
    df = pd.DataFrame(rows, columns=COLUMNS).astype({"layer": "int64", "index": "int64", "score": "float64",
                                                     "site": object, "kind": object, "group": object})
    df.attrs.update(method=neurons.method, params=dict(neurons.params), model=neurons.model,
                    sources=dict(neurons.sources))
    return df


def neurons_from_pandas(df, cls, **meta: Any):
    """DataFrame with ``site``, ``index`` (and ``score``) columns -> ``cls`` (``NeuronSet``); ``meta`` overrides
    ``df.attrs``."""
    missing = [c for c in ("site", "index") if c not in df.columns]
    if missing:
        raise ValueError(f"DataFrame lacks column(s) {missing}")
    scores = df["score"].tolist() if "score" in df.columns else [0.0] * len(df)
    pairs = [(str(s), int(i), float(v)) for s, i, v in zip(df["site"], df["index"], scores)]
    info = {k: df.attrs[k] for k in ("method", "params", "model", "sources") if k in df.attrs}
    info.update(meta)
    return cls.from_pairs(pairs, **info)


def neurons_html(neurons, rows: int = 10) -> str:
    by_kind = neurons.counts_by_kind()
    df = neurons_to_pandas(neurons)
    return (f"<p><b>NeuronSet</b> {html.escape(neurons.method)}: {len(neurons)} neurons "
            f"({', '.join(f'{k} {v}' for k, v in by_kind.items())}), model {html.escape(neurons.model)}</p>"
            + df.head(rows).to_html(index=False))


# ------------------------------------------------------------------------------------------- EvalResult
RECORD_COLUMNS = ["id", "group", "answer_idx", "pred", "correct", "option_scores", "predicted_token", "pred_norm",
                  "correct_norm", "alignment"]


def eval_to_pandas(result):
    """``EvalResult`` -> one row per item record (``RECORD_COLUMNS``; ``option_scores`` a list per row);
    ``attrs``: format, restrict_to_choices, control, metadata."""
    from dataclasses import asdict

    pd = _pd()
    df = pd.DataFrame([asdict(r) for r in result.records], columns=RECORD_COLUMNS)
    df = df.astype({"id": object, "group": object, "answer_idx": "int64", "correct": bool})
    df.attrs.update(format=result.format, restrict_to_choices=result.restrict_to_choices, control=result.control,
                    metadata=dict(result.metadata))
    return df


def _none(x):
    if x is None:
        return None
    if isinstance(x, float) and np.isnan(x):
        return None
    return x


def eval_from_pandas(df, cls, record_cls):
    """The inverse of ``eval_to_pandas``: ``cls`` is the result type (``EvalResult``), ``record_cls`` its per-item
    record (``ItemRecord``)."""
    missing = [c for c in RECORD_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"DataFrame lacks column(s) {missing}")
    if "format" not in df.attrs:
        raise ValueError("DataFrame.attrs lacks 'format' (write it with EvalResult.to_pandas())")
    records = []
    for row in df.to_dict("records"):
        records.append(record_cls(
            id=str(row["id"]), group=str(row["group"]), answer_idx=int(row["answer_idx"]),
            pred=None if _none(row["pred"]) is None else int(row["pred"]), correct=bool(row["correct"]),
            option_scores=[float(x) for x in row["option_scores"]],
            predicted_token=None if _none(row["predicted_token"]) is None else int(row["predicted_token"]),
            pred_norm=None if _none(row["pred_norm"]) is None else int(row["pred_norm"]),
            correct_norm=None if _none(row["correct_norm"]) is None else bool(row["correct_norm"]),
            alignment=None if _none(row["alignment"]) is None else float(row["alignment"]),
        ))
    attrs = df.attrs
    return cls(records, attrs["format"], bool(attrs.get("restrict_to_choices", False)), attrs.get("control"),
                      dict(attrs.get("metadata", {})))


def eval_html(result) -> str:
    summary = result.summary()
    return (f"<p><b>EvalResult</b> ({html.escape(result.format)}): {summary['n_items']} items, accuracy "
            f"{summary['accuracy']:.3f}</p>" + eval_to_pandas(result).head(10).to_html(index=False))
