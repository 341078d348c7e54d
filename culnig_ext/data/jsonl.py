"""The canonical item file: one ``MCItem`` dict per line (UTF-8 JSON Lines)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from culnig_ext._utils.atomic import atomic_write_text
from culnig_ext.data.schema import MCItem, SchemaError, check_unique_ids, validate_items
from culnig_ext.data.tabular import jsonl_rows


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
