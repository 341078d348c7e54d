"""``load_items``: every kind of source string, its options, and clear errors."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from culnig_ext.data.jsonl import write_jsonl
from culnig_ext.data.schema import MCItem, SchemaError
from culnig_ext.data.sources import load_items

from tests.shared_data import SHARED_DATA as SHARED, needs_shared_data


def test_builtin_cultural_with_split_and_countries():
    items = load_items("builtin:cultural")
    assert len(items) == 144
    neur = load_items("builtin:cultural", split="neur")
    test = load_items("builtin:cultural", split="test")
    assert len(neur) == len(test) == 72
    assert {i.topic for i in neur} == {"Food", "Work life", "Sport"}
    two = load_items("builtin:cultural", countries=["Iran", "South Korea"], split="test")
    assert Counter(i.group for i in two) == {"South_Korea": 9, "Iran": 9}
    with pytest.raises(ValueError, match="has no country 'Greece'"):
        load_items("builtin:cultural", countries=["Greece"])


def test_builtin_general_and_countryrc():
    assert len(load_items("builtin:general")) == 64
    with pytest.raises(ValueError, match="has no countries"):
        load_items("builtin:general", countries=["US"])
    with pytest.raises(SchemaError, match="field 'topic': missing"):
        load_items("builtin:general", split="neur")
    crc = load_items("builtin:countryrc", countries=["US", "Iran"])
    assert len(crc) == 15 * 2 and {i.question_id for i in crc} == {str(i) for i in range(15)}
    assert crc[0].id == "builtin-countryrc:0:US"
    crc_test = load_items("builtin:countryrc-test")
    assert len(crc_test) == 15 * 16 and {i.question_id for i in crc_test} == {str(i) for i in range(15, 30)}
    assert load_items("builtin:countryrc", seed=1) != load_items("builtin:countryrc", seed=0)
    with pytest.raises(ValueError, match="no such builtin set"):
        load_items("builtin:nope")


@needs_shared_data
def test_countryrc_file_with_range():
    path = SHARED / "countryrc" / "data.json"
    scoring = load_items(f"countryrc:{path}@0-24", countries=["Spain"])
    assert [i.question_id for i in scoring] == [str(i) for i in range(25)]
    assert len(load_items(f"countryrc:{path}", countries=["Spain"])) == 50
    assert [i.question_id for i in load_items(f"countryrc:{path}", countries=["Spain"], template_ids=[3])] == ["3"]
    with pytest.raises(ValueError, match="either as @A-B or as template_ids"):
        load_items(f"countryrc:{path}@0-2", template_ids=[1])


@needs_shared_data
def test_blend_annotation_folder_with_stats():
    stats: dict = {}
    items = load_items(str(SHARED / "blend"), countries=["Ethiopia"], split="neur", stats=stats)
    assert {i.topic for i in items} <= {"Food", "Work life", "Sport"}
    assert {i.group for i in items} == {"Ethiopia"}
    assert stats["n_items"] == len(items)
    assert set(stats["skipped"]) <= {"no_gold", "too_few_distractors"} and sum(stats["skipped"].values()) > 0
    per_q = Counter((i.group, i.question_id) for i in items)
    assert max(per_q.values()) == 5


@needs_shared_data
def test_canonical_jsonl_and_blend_mcq_file(tmp_path):
    items = [MCItem(id=f"i{k}", group=g, question="q", choices=("a", "b"), answer_idx=0) for k, g in enumerate(["US", "UK"])]
    path = write_jsonl(items, tmp_path / "items.jsonl")
    assert load_items(str(path)) == items
    assert load_items(str(path), countries=["UK"]) == items[1:]

    row = {
        "MCQID": "Al-en-09_0", "ID": "Al-en-09", "country": "US",
        "prompt": 'What is a popular snack? Without any explanation, choose only one from the given alphabet choices(e.g., A, B, C). Provide as JSON format: {"answer_choice":""}\n\nA. popcorn\nB. cotton candy\n\nAnswer:',
        "choices": json.dumps({"A": "popcorn", "B": "cotton candy"}), "choice_countries": "{}", "answer_idx": "B",
    }
    mcq = tmp_path / "mcq.jsonl"
    mcq.write_text(json.dumps(row) + "\n")
    (item,) = load_items(str(mcq))
    assert item.answer == "cotton candy" and item.topic is None
    with pytest.raises(ValueError, match="needs topics: pass questions_dir"):
        load_items(str(mcq), split="neur")
    (item,) = load_items(str(mcq), split="neur", questions_dir=SHARED / "blend" / "questions")
    assert item.topic == "Food"


def test_named_evalsets_local(tmp_path):
    rows = [{"question": "q?", "sentence": "s.", "label": 0, "idx": 3}]
    path = tmp_path / "qnli.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n")
    (item,) = load_items(f"qnli:{path}")
    assert item.id == "qnli:3" and item.answer == "yes"
    with pytest.raises(ValueError, match="has no countries"):
        load_items(f"qnli:{path}", countries=["US"])


def test_hub_ids_route_to_loaders(monkeypatch):
    import datasets

    calls = []

    def fake(*a, **k):
        calls.append((a, k))
        return [{"id": "x", "question": "Where is milk kept?", "question_concept": "milk",
                 "choices": {"label": ["A", "B"], "text": ["fridge", "oven"]}, "answerKey": "A"}]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    (item,) = load_items("tau/commonsense_qa")
    assert item.answer == "fridge" and calls == [(("tau/commonsense_qa",), {"split": "validation"})]
    with pytest.raises(ValueError, match="needs topics"):
        load_items("nayeon212/BLEnD", split="neur")


def test_unknown_sources(tmp_path):
    with pytest.raises(ValueError, match=r"unknown item source 'mystery'; accepted:\n  builtin:cultural"):
        load_items("mystery")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_items(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="without annotations/ and questions/"):
        load_items(str(tmp_path / "empty_dir"))
    table = tmp_path / "t.csv"
    table.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"t\.csv, row 1 \(line 2\): field\(s\) \['id', 'question', 'choices', "
                                         r"'answer_idx', 'group'\] missing; canonical items need .*BLEnD "
                                         r"multiple-choice files have MCQID"):
        load_items(str(table))
    with pytest.raises(ValueError, match="unknown split"):
        load_items("builtin:cultural", split="dev")
