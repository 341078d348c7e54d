"""MCItem validation and the canonical JSONL file."""
from __future__ import annotations

import json
import os
import re

import pytest

from culnig_ext.data.jsonl import read_jsonl, write_jsonl
from culnig_ext.data.schema import MCItem, SchemaError, check_unique_ids, validate_items


def _item(**kw):
    base = dict(id="a", group="US", question="Q?", choices=("x", "y", "z"), answer_idx=1)
    base.update(kw)
    return MCItem(**base)


def test_item_basics_and_round_trip():
    item = _item(topic="Food", question_id="q1", values=[1, 2, 3.5], choices=["x", "y", "z"])
    assert item.choices == ("x", "y", "z")
    assert item.values == (1.0, 2.0, 3.5) and all(isinstance(v, float) for v in item.values)
    assert item.answer == "y"
    d = item.to_dict()
    assert d == {
        "id": "a", "group": "US", "question": "Q?", "choices": ["x", "y", "z"], "answer_idx": 1,
        "topic": "Food", "question_id": "q1", "values": [1.0, 2.0, 3.5],
    }
    assert MCItem.from_dict(json.loads(json.dumps(d))) == item
    # Optional fields that are None are left out.
    assert set(_item().to_dict()) == {"id", "group", "question", "choices", "answer_idx"}


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(id=""), "id"),
        (dict(id="  "), "id"),
        (dict(group=""), "group"),
        (dict(question=None), "question"),
        (dict(choices=("only",)), "choices"),
        (dict(choices=("x", "")), "choices"),
        (dict(choices=("Paris", " paris ")), "choices"),
        (dict(answer_idx=3), "answer_idx"),
        (dict(answer_idx=-1), "answer_idx"),
        (dict(answer_idx=True), "answer_idx"),
        (dict(answer_idx="1"), "answer_idx"),
        (dict(topic=""), "topic"),
        (dict(question_id=""), "question_id"),
        (dict(values=(1.0, 2.0)), "values"),
        (dict(values=(1.0, float("nan"), 2.0)), "values"),
    ],
)
def test_item_validation_names_field(kw, field):
    with pytest.raises(SchemaError, match=rf"field '{field}'"):
        _item(**kw)


def test_empty_question_is_allowed_for_controls():
    assert _item(question="").question == ""


def test_from_dict_errors_name_place_and_field():
    good = _item().to_dict()
    with pytest.raises(SchemaError, match=r"^f\.jsonl, line 7: field 'answer_idx': missing$"):
        MCItem.from_dict({k: v for k, v in good.items() if k != "answer_idx"}, where="f.jsonl, line 7")
    with pytest.raises(SchemaError, match=r"^here: field 'answr': unknown field"):
        MCItem.from_dict({**good, "answr": 1}, where="here")
    with pytest.raises(SchemaError, match=r"^here: field 'answer_idx': 5 is out of range for 3 options$"):
        MCItem.from_dict({**good, "answer_idx": 5}, where="here")
    with pytest.raises(SchemaError, match=r"^here: expected a JSON object"):
        MCItem.from_dict([1, 2], where="here")


def test_unique_ids():
    a, b = _item(id="a"), _item(id="b")
    assert validate_items([a, b]) == [a, b]
    with pytest.raises(SchemaError, match=r"duplicate id 'a'"):
        validate_items([a, b, _item(id="a")])
    with pytest.raises(SchemaError, match=r"^L3: field 'id': duplicate id 'a' \(first at L1\)$"):
        check_unique_ids([a, b, a], places=["L1", "L2", "L3"])
    with pytest.raises(SchemaError, match=r"position 1: expected an MCItem"):
        validate_items([a, {"id": "b"}])


def test_jsonl_round_trip(tmp_path):
    items = [_item(id="a", topic="Food"), _item(id="b", question="", values=(0, 1, 2)), _item(id="c", choices=("é", "ü"), answer_idx=0)]
    path = write_jsonl(items, tmp_path / "sub" / "items.jsonl")
    assert read_jsonl(path) == items
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and json.loads(lines[2])["choices"] == ["é", "ü"]
    assert "é" in lines[2]  # written as UTF-8, not \u escapes
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["items.jsonl"]  # no temporary left behind


def test_jsonl_write_is_atomic_on_failure(tmp_path):
    path = tmp_path / "items.jsonl"
    write_jsonl([_item(id="a")], path)
    before = path.read_bytes()
    with pytest.raises(SchemaError, match="duplicate id"):
        write_jsonl([_item(id="x"), _item(id="x")], path)
    with pytest.raises(SchemaError, match="empty item file"):
        write_jsonl([], path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["items.jsonl"]


def test_read_jsonl_errors_name_file_line_field(tmp_path):
    good = json.dumps(_item(id="a").to_dict())
    path = tmp_path / "bad.jsonl"
    p = re.escape(str(path))

    path.write_text(good + "\n\n" + '{"id": "b", "group": "US", "question": "q", "choices": ["x"], "answer_idx": 0}\n')
    with pytest.raises(SchemaError, match=rf"^{p}, line 3: field 'choices': must hold at least 2 options"):
        read_jsonl(path)

    path.write_text(good + "\n{not json\n")
    with pytest.raises(SchemaError, match=rf"^{p}, line 2: invalid JSON"):
        read_jsonl(path)

    path.write_text(good + "\n" + good + "\n")
    with pytest.raises(SchemaError, match=rf"^{p}, line 2: field 'id': duplicate id 'a' \(first at {p}, line 1\)$"):
        read_jsonl(path)

    path.write_text("\n\n")
    with pytest.raises(SchemaError, match="no items"):
        read_jsonl(path)

    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_jsonl(tmp_path / "missing.jsonl")
