"""The canonical item file: one ``MCItem`` dict per line (UTF-8 JSON Lines)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

from .schema import MCItem, SchemaError, check_unique_ids, validate_items


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
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SchemaError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
            items.append(MCItem.from_dict(data, where=where))
            places.append(where)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item.to_dict(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path
