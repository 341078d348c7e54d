"""Decoding errors that name the file: ``'utf-8' codec can't decode byte 0xff`` alone does not say which file.

Readers wrap their reads in ``utf8_errors(path)``; a ``UnicodeDecodeError`` becomes ``error_class("<path>, line N:
not UTF-8 text (byte 0xff at column C)")``. The line is found by re-reading the bytes, only on that error path (a
text stream decodes ahead in chunks, so the position inside the exception is not the position in the file).
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ENCODING = "utf-8"


def describe_utf8_error(path: str | os.PathLike) -> str:
    """``"<path>, line N: not UTF-8 text (byte 0xNN at column C)"``; without line when the file cannot be re-read."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        raw.decode(ENCODING)
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - before.rfind(b"\n")  # 1-based: the bad byte's offset after the last newline
        return f"{path}, line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column})"
    except OSError:
        pass
    return f"{path}: not UTF-8 text"


@contextmanager
def utf8_errors(path: str | os.PathLike, error_class: type[Exception] = ValueError) -> Iterator[None]:
    """Turn a ``UnicodeDecodeError`` raised inside the block into ``error_class`` naming ``path`` and the line."""
    try:
        yield
    except UnicodeDecodeError:
        raise error_class(describe_utf8_error(path)) from None


def read_json(path: str | os.PathLike) -> object:
    """The JSON document in the UTF-8 file ``path``; a file that is not UTF-8 or not valid JSON raises
    ``ValueError`` naming the file and the line (``FileNotFoundError`` and other ``OSError``s pass through)."""
    try:
        with utf8_errors(path):
            with open(path, encoding=ENCODING) as f:
                return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
