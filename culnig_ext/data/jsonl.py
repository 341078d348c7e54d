"""The canonical item file: one ``MCItem`` dict per line (UTF-8 JSON Lines); ``read_item_file`` also reads the
same schema from a CSV/TSV, Parquet or JSON table (bring your own data)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from culnig_ext._utils.atomic import atomic_write_text
from culnig_ext.data.schema import MCItem, SchemaError, check_unique_ids, validate_items
from culnig_ext.data.tabular import Row, iter_rows, jsonl_rows


def read_jsonl(path: str | Path) -> list[MCItem]:
    """Read a canonical item file. Blank lines are skipped.

    Raises:
        FileNotFoundError: if the file does not exist.
        SchemaError: ``"<path>, line <n>: field '<name>': <problem>"`` for invalid JSON, a bad field, a duplicate
            id (naming both lines), or a file without items.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such item file: {path}")
    items: list[MCItem] = []
    places: list[str] = []
    for row in jsonl_rows(path):
        items.append(MCItem.from_dict(row.data, where=row.where))
        places.append(row.where)
    if not items:
        raise SchemaError(f"{path}: no items")
    check_unique_ids(items, places=places)
    return items


CANONICAL = ("id", "question", "choices", "answer_idx")


def is_canonical_table(path: str | Path, group_field: str = "group") -> bool:
    """Whether the first row of a table file has the canonical item columns (``CANONICAL`` and ``group_field``)."""
    for row in iter_rows(path):
        return all(c in row.data for c in (*CANONICAL, group_field))
    return False


def _cell(row: Row, key: str, value):
    """A CSV cell as the schema's type: ``choices``/``values`` a JSON list, ``answer_idx`` a whole number, an empty
    optional cell None."""
    if not isinstance(value, str):
        return value
    if key in ("choices", "values"):
        try:
            value = json.loads(value) if value.strip() else None
        except json.JSONDecodeError:
            raise SchemaError(f"{row.where}: field {key!r}: expected a JSON list such as [\"a\", \"b\"], got "
                              f"{value!r}") from None
    elif key == "answer_idx":
        try:
            value = int(value)
        except ValueError:
            raise SchemaError(f"{row.where}: field 'answer_idx': expected a whole number, got {value!r}") from None
    elif key in ("topic", "question_id", "values") and not value.strip():
        value = None
    return value


def read_item_file(path: str | Path, group_field: str = "group") -> list[MCItem]:
    """Items in the canonical schema from a ``.jsonl``, ``.json``, ``.csv``/``.tsv`` or ``.parquet`` file, the group
    read from the column ``group_field`` (CSV: ``choices`` as a JSON list). Errors name the file, row and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such item file: {path}")
    items: list[MCItem] = []
    places: list[str] = []
    for row in iter_rows(path):
        data = dict(row.data)
        if group_field != "group":
            if group_field not in data:
                raise SchemaError(f"{row.where}: field {group_field!r} (the group field): missing")
            data["group"] = data.pop(group_field)
        data = {k: _cell(row, k, v) for k, v in data.items()}
        items.append(MCItem.from_dict(data, where=row.where))
        places.append(row.where)
    if not items:
        raise SchemaError(f"{path}: no items")
    check_unique_ids(items, places=places)
    return items


def write_jsonl(items: Iterable[MCItem], path: str | Path) -> Path:
    """Write items to ``path`` atomically (temporary file in the same folder, then ``os.replace``).

    Raises:
        SchemaError: if an element is not an ``MCItem``, ids repeat, or there are no items.
    """
    items = validate_items(items)
    if not items:
        raise SchemaError(f"{path}: refusing to write an empty item file")
    text = "".join(json.dumps(item.to_dict(), ensure_ascii=False) + "\n" for item in items)
    return atomic_write_text(path, text)
