"""Bring your own data: canonical items in .jsonl, .csv and .parquet files, with the group in a column of your
choice (culnig_ext.data.jsonl.read_item_file through load_items); bad cells are refused naming the file, row and
field."""
from __future__ import annotations

import csv
import json

import pytest

from culnig_ext.data import load_items
from culnig_ext.data.schema import MCItem, SchemaError

ROWS = [
    {"id": "p1", "persona": "pirate", "question": "Arr or nay ?", "choices": ["arr", "nay"], "answer_idx": 0},
    {"id": "p2", "persona": "poet", "question": "Rhyme or prose ?", "choices": ["rhyme", "prose", "both"],
     "answer_idx": 2, "topic": "style"},
]
EXPECTED = [MCItem("p1", "pirate", "Arr or nay ?", ("arr", "nay"), 0),
            MCItem("p2", "poet", "Rhyme or prose ?", ("rhyme", "prose", "both"), 2, topic="style")]


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "persona", "question", "choices", "answer_idx", "topic"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "choices": json.dumps(r["choices"]), "topic": r.get("topic", "")})


def test_csv_jsonl_and_parquet_read_the_same_items(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    write_csv(tmp_path / "a.csv", ROWS)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pq.write_table(pa.Table.from_pylist([{**r, "topic": r.get("topic")} for r in ROWS]), tmp_path / "a.parquet")
    for name in ("a.csv", "a.jsonl", "a.parquet"):
        assert load_items(str(tmp_path / name), group_field="persona", max_per_question=None) == EXPECTED, name
    assert load_items(str(tmp_path / "a.csv"), group_field="persona", countries=["poet"]) == EXPECTED[1:]


def test_a_canonical_csv_with_a_group_column(tmp_path):
    rows = [{**r, "group": r["persona"]} for r in ROWS]
    with open(tmp_path / "g.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["id", "group", "question", "choices", "answer_idx"])
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(r[k]) if k == "choices" else r[k] for k in w.fieldnames})
    assert [it.group for it in load_items(str(tmp_path / "g.csv"))] == ["pirate", "poet"]


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(choices="arr, nay"), r"row 1 \(line 2\): field 'choices': expected a JSON list"),
    (lambda r: r.update(answer_idx="first"), r"row 1 \(line 2\): field 'answer_idx': expected a whole number"),
    (lambda r: r.update(answer_idx="5"), r"row 1 \(line 2\): field 'answer_idx': 5 is out of range"),
])
def test_bad_cells_name_the_row_and_field(tmp_path, edit, message):
    bad = [dict(r) for r in ROWS]
    write_csv(tmp_path / "b.csv", bad)
    text = (tmp_path / "b.csv").read_text().splitlines()
    row = dict(bad[0])
    edit(row)
    with open(tmp_path / "b.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(text[0].split(","))
        w.writerow([row["id"], row["persona"], row["question"],
                    row["choices"] if isinstance(row["choices"], str) else json.dumps(row["choices"]),
                    row["answer_idx"], ""])
    with pytest.raises(SchemaError, match=message):
        load_items(str(tmp_path / "b.csv"), group_field="persona")


def test_a_missing_group_field_is_named(tmp_path):
    write_csv(tmp_path / "a.csv", ROWS)
    with pytest.raises(SchemaError, match=r"a\.csv, row 1 \(line 2\): field\(s\) \['team'\] missing; canonical items"):
        load_items(str(tmp_path / "a.csv"), group_field="team")
    with pytest.raises(ValueError, match="applies to canonical item files only"):
        load_items("builtin:cultural", group_field="persona")
