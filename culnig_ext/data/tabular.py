"""Read rows of a table from a local JSON, JSONL, CSV/TSV or Parquet file, each row with its place in the file.

Loaders of public data sets use this for local copies that have the same columns as the hub version. Every row
comes with a ``where`` string (``"file.csv, row 3 (line 5)"``, ``"file.jsonl, line 3"``) for error messages.
"""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from culnig_ext._utils.textfile import utf8_errors
from culnig_ext.data.schema import SchemaError

TABLE_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet")


@dataclass(frozen=True)
class Row:
    """One row of a table: its place in the file (for messages) and its columns."""

    where: str
    data: dict[str, Any]


def _json_rows(path: Path) -> Iterator[Row]:
    try:
        with utf8_errors(path, SchemaError), open(path, encoding="utf-8-sig") as f:
            obj = json.load(f)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if isinstance(obj, dict) and obj and all(isinstance(v, list) for v in obj.values()):
        # Column-oriented JSON ({"col": [v0, v1, ...], ...}), as written by pandas' to_json(orient="list").
        lengths = {len(v) for v in obj.values()}
        if len(lengths) != 1:
            raise SchemaError(f"{path}: column-oriented JSON with columns of different lengths {sorted(lengths)}")
        columns = list(obj)
        for i in range(lengths.pop()):
            yield Row(f"{path}, record {i + 1}", {c: obj[c][i] for c in columns})
        return
    if not isinstance(obj, list):
        raise SchemaError(f"{path}: expected a JSON list of objects (or an object of columns), got {type(obj).__name__}")
    for i, rec in enumerate(obj):
        where = f"{path}, record {i + 1}"
        if not isinstance(rec, dict):
            raise SchemaError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        yield Row(where, rec)


def jsonl_rows(path: Path) -> Iterator[Row]:
    """Rows of a JSON Lines file (blank lines skipped); errors name the file and line."""
    with utf8_errors(path, SchemaError), open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SchemaError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(rec, dict):
                raise SchemaError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            yield Row(where, rec)


def _csv_rows(path: Path, delimiter: str) -> Iterator[Row]:
    # Cells can hold multi-line text (BLEnD prompts), so rows are named by number and starting line.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with utf8_errors(path, SchemaError), open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        start = reader.line_num + 1
        for n, cells in enumerate(reader, start=1):
            where = f"{path}, row {n} (line {start})"
            start = reader.line_num + 1
            if not cells:
                continue
            if len(cells) != len(header):
                raise SchemaError(f"{where}: {len(cells)} cells but the header has {len(header)} columns")
            yield Row(where, dict(zip(header, cells)))


def _parquet_rows(path: Path) -> Iterator[Row]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow ships with the 'hub' extra (datasets)
        raise ImportError(f"reading {path} needs pyarrow: pip install 'culnig_ext[hub]'") from exc
    for i, rec in enumerate(pq.read_table(path).to_pylist()):
        yield Row(f"{path}, row {i + 1}", rec)


def read_rows(path: str | Path) -> list[Row]:
    """``list(iter_rows(path))``."""
    return list(iter_rows(path))


def iter_rows(path: str | Path) -> Iterator[Row]:
    """Stream the rows of a ``.json`` (list of objects, or object of columns), ``.jsonl``, ``.csv``, ``.tsv`` or
    ``.parquet`` file.

    Raises:
        FileNotFoundError: if the file does not exist.
        SchemaError: for an unknown suffix or malformed content, naming the file and line/row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        rows = _json_rows(path)
    elif suffix == ".jsonl":
        rows = jsonl_rows(path)
    elif suffix in (".csv", ".tsv"):
        rows = _csv_rows(path, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        raise SchemaError(f"{path}: unsupported file type {suffix!r} (accepted: {', '.join(TABLE_SUFFIXES)})")
    return rows


def require_columns(row: Row, columns: tuple[str, ...]) -> None:
    """Raise if a row lacks any of ``columns``.

    Raises:
        SchemaError: ``"<where>: field '<col>': missing (columns present: ...)"``.
    """
    for col in columns:
        if col not in row.data:
            raise SchemaError(f"{row.where}: field {col!r}: missing (columns present: {', '.join(map(str, row.data))})")


def hub_rows(dataset: Any, name: str) -> list[Row]:
    """Wrap the rows of a loaded Hugging Face ``datasets.Dataset`` (or any iterable of dicts) as ``Row``s named
    ``"<name>, row N"``."""
    return [Row(f"{name}, row {i + 1}", dict(rec)) for i, rec in enumerate(dataset)]
