"""_utils.textfile: decoding errors that name the file, line and column; JSON reads that name the line."""
from __future__ import annotations

import pytest

from culnig_ext._utils.textfile import describe_utf8_error, read_json, utf8_errors


def test_the_bad_byte_is_located_by_line_and_column(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "ok"}\n  x\xffy\n')  # third line, the 4th byte (after two spaces and x)
    assert describe_utf8_error(path) == f"{path}, line 3: not UTF-8 text (byte 0xff at column 4)"
    first = tmp_path / "first.txt"
    first.write_bytes(b"\xfe")
    assert describe_utf8_error(first) == f"{first}, line 1: not UTF-8 text (byte 0xfe at column 1)"


def test_without_a_readable_bad_byte_only_the_path_is_named(tmp_path):
    missing = tmp_path / "gone.txt"
    assert describe_utf8_error(missing) == f"{missing}: not UTF-8 text"
    fine = tmp_path / "fine.txt"
    fine.write_text("héllo\n", encoding="utf-8")
    assert describe_utf8_error(fine) == f"{fine}: not UTF-8 text"


def test_utf8_errors_turns_a_decode_error_into_the_named_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(b"a,b\n1,\xe9\n")
    with pytest.raises(ValueError) as info:
        with utf8_errors(path):
            path.read_text(encoding="utf-8")
    assert str(info.value) == f"{path}, line 2: not UTF-8 text (byte 0xe9 at column 3)"
    assert info.value.__cause__ is None and info.value.__suppress_context__

    class Refused(Exception):
        """A caller's own error class."""

    with pytest.raises(Refused, match=r"line 2: not UTF-8 text"):
        with utf8_errors(path, Refused):
            path.read_text(encoding="utf-8")
    with pytest.raises(KeyError):  # other errors pass through unchanged
        with utf8_errors(path):
            raise KeyError("x")
    with utf8_errors(path):  # and nothing happens without an error
        value = 3
    assert value == 3


def test_read_json_reads_a_document_and_names_the_line_of_an_error(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2.5, "é"], "b": null}', encoding="utf-8")
    assert read_json(good) == {"a": [1, 2.5, "é"], "b": None}
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "a": 1,\n  "b": \n}\n', encoding="utf-8")
    with pytest.raises(ValueError) as info:
        read_json(broken)
    assert str(info.value).startswith(f"{broken}: line 4: not valid JSON (Expecting value")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(ValueError, match=r"latin\.json, line 1: not UTF-8 text \(byte 0xe9 at column 8\)"):
        read_json(latin)
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")


def test_a_bad_byte_right_after_a_leading_newline_is_on_line_two_column_one(tmp_path):
    path = tmp_path / "lead.txt"
    path.write_bytes(b"\n\xff")
    assert describe_utf8_error(path) == f"{path}, line 2: not UTF-8 text (byte 0xff at column 1)"
