"""Evaluation-set loaders on small local files with the hub's columns, and the hub call itself (mocked)."""
from __future__ import annotations

import csv
import json
import re

import pytest

from culnig_ext.data.evalsets import (
    load_commonsenseqa,
    load_culturalbench,
    load_mrpc,
    load_normad,
    load_qnli,
    load_worldvaluesbench,
)
from culnig_ext.data.schema import SchemaError


def _csv(path, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)
    return path


CB_ROWS = [
    {"data_idx": 0, "question_idx": 0, "prompt_question": "In the US, what is served at Thanksgiving?",
     "prompt_option_a": "Kimchi", "prompt_option_b": "Turkey", "prompt_option_c": "Paella", "prompt_option_d": "Sushi",
     "answer": "B", "country": "United States"},
    {"data_idx": 1, "question_idx": 1, "prompt_question": "In Zimbabwe, which greeting is polite?",
     "prompt_option_a": "Clapping hands", "prompt_option_b": "Bowing deeply", "prompt_option_c": "Waving", "prompt_option_d": "Nothing",
     "answer": "A", "country": "Zimbabwe"},
    {"data_idx": 2, "question_idx": 2, "prompt_question": "In South Korea, what is eaten on birthdays?",
     "prompt_option_a": "Cake only", "prompt_option_b": "Pizza", "prompt_option_c": "Tacos", "prompt_option_d": "Seaweed soup",
     "answer": "D", "country": "South Korea"},
]


def test_culturalbench_csv(tmp_path):
    path = _csv(tmp_path / "cb.csv", CB_ROWS)
    items = load_culturalbench(path)
    assert [i.id for i in items] == ["culturalbench:0", "culturalbench:1", "culturalbench:2"]
    assert [i.group for i in items] == ["US", "Zimbabwe", "South_Korea"]
    assert [i.answer for i in items] == ["Turkey", "Clapping hands", "Seaweed soup"]
    assert items[0].choices == ("Kimchi", "Turkey", "Paella", "Sushi") and items[0].question_id == "0"
    only = load_culturalbench(path, countries=["South_Korea", "USA"])
    assert [i.id for i in only] == ["culturalbench:0", "culturalbench:2"]

    bad = [dict(r) for r in CB_ROWS]
    bad[1]["answer"] = "E"
    path = _csv(tmp_path / "bad.csv", bad)
    with pytest.raises(SchemaError, match=re.escape(str(path)) + r", row 2 \(line 3\): field 'answer': expected A, B, C or D"):
        load_culturalbench(path)


def test_culturalbench_hub_call(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or CB_ROWS)
    items = load_culturalbench()
    assert calls == [(("kellycyy/CulturalBench", "CulturalBench-Easy"), {"split": "test"})]
    assert [i.answer for i in items] == ["Turkey", "Clapping hands", "Seaweed soup"]


def test_normad_jsonl(tmp_path):
    rows = [
        {"ID": "n1", "Country": "united_states_of_america", "Background": "...", "Story": "Ann brought a gift to dinner.",
         "Explanation": "...", "Gold Label": "yes"},
        {"ID": "n2", "Country": "south_korea", "Story": "Bo poured his own drink first.", "Gold Label": "no"},
        {"ID": "n3", "Country": "zimbabwe", "Story": "Chi greeted the elders.", "Gold Label": "Neutral"},
    ]
    path = tmp_path / "normad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_normad(path)
    assert [i.group for i in items] == ["US", "South_Korea", "Zimbabwe"]
    assert [i.answer for i in items] == ["yes", "no", "neutral"]
    assert items[1].question == (
        "Country: South Korea\nStory: Bo poured his own drink first.\n"
        "Does the behavior in the story fit the social norms of this country?"
    )
    assert items[0].choices == ("yes", "no", "neutral") and items[0].id == "normad:n1"
    rows[2]["Gold Label"] = "maybe"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SchemaError, match=re.escape(str(path)) + r", line 3: field 'Gold Label'"):
        load_normad(path)


CSQA = [
    {"id": "q1", "question": "Where do you keep milk cold?", "question_concept": "milk",
     "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["oven", "fridge", "shelf", "car", "garden"]}, "answerKey": "B"},
    {"id": "q2", "question": "What do you use to write?", "question_concept": "write",
     "choices": {"label": ["A", "B", "C", "D", "E"], "text": ["pen", "cup", "shoe", "lamp", "rug"]}, "answerKey": "A"},
]


def test_commonsenseqa_json_and_csv(tmp_path):
    path = tmp_path / "csqa.json"
    path.write_text(json.dumps(CSQA))
    items = load_commonsenseqa(path)
    assert [i.answer for i in items] == ["fridge", "pen"] and all(i.group == "commonsenseqa" for i in items)
    assert items[0].choices == ("oven", "fridge", "shelf", "car", "garden")
    # CSV with the nested column as JSON text gives the same items.
    rows = [{**r, "choices": json.dumps(r["choices"])} for r in CSQA]
    assert load_commonsenseqa(_csv(tmp_path / "csqa.csv", rows)) == items
    rows[1]["answerKey"] = ""  # the test split has no answers
    with pytest.raises(SchemaError, match=r"row 2 \(line 3\): field 'answerKey'"):
        load_commonsenseqa(_csv(tmp_path / "csqa2.csv", rows))


def test_qnli_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"question": "Who wrote Hamlet?", "sentence": "Hamlet was written by Shakespeare.", "label": 0, "idx": 0},
        {"question": "Who wrote Hamlet?", "sentence": "Hamlet is set in Denmark.", "label": 1, "idx": 1},
    ]
    path = tmp_path / "qnli.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    items = load_qnli(path)
    assert [i.answer for i in items] == ["yes", "no"] and [i.id for i in items] == ["qnli:0", "qnli:1"]
    assert items[0].question == (
        "Question: Who wrote Hamlet?\nSentence: Hamlet was written by Shakespeare.\n"
        "Does the sentence contain the answer to the question?"
    )
    pq.write_table(pa.Table.from_pylist([{**rows[0], "label": -1}]), path)
    with pytest.raises(SchemaError, match=r"qnli\.parquet, row 1: field 'label': expected 0 or 1"):
        load_qnli(path)


def test_qnli_mrpc_hub_calls(monkeypatch):
    import datasets

    calls = []

    def fake(*a, **k):
        calls.append((a, k))
        if a[1] == "qnli":
            return [{"question": "q?", "sentence": "s.", "label": 1, "idx": 5}]
        return [{"sentence1": "A cat sat.", "sentence2": "A cat was sitting.", "label": 1, "idx": 9}]

    monkeypatch.setattr(datasets, "load_dataset", fake)
    assert load_qnli()[0].answer == "no"
    assert load_mrpc()[0].answer == "yes"
    assert calls == [(("nyu-mll/glue", "qnli"), {"split": "validation"}), (("nyu-mll/glue", "mrpc"), {"split": "test"})]


def test_mrpc_tsv(tmp_path):
    rows = [
        {"sentence1": "He left early.", "sentence2": "He departed early.", "label": 1, "idx": 0},
        {"sentence1": "It rained.", "sentence2": "The sun shone.", "label": 0, "idx": 1},
    ]
    items = load_mrpc(_csv(tmp_path / "mrpc.tsv", rows, delimiter="\t"))
    assert [i.answer for i in items] == ["yes", "no"] and items[0].choices == ("no", "yes")
    assert items[1].question == "Sentence 1: It rained.\nSentence 2: The sun shone.\nDo the two sentences mean the same thing?"


def _wvb(tmp_path):
    root = tmp_path / "WorldValuesBench"
    (root / "full").mkdir(parents=True)
    meta = {
        "B_COUNTRY": {"question": "country?", "use_case": "demographic", "answer_scale_min": "", "answer_scale_max": "",
                      "answer_data_type": "non_ordinal"},
        "Q1": {"question": "On a scale of 1 to 4, how important is family?", "use_case": "value",
               "answer_scale_min": 1, "answer_scale_max": 4, "answer_data_type": "ordinal"},
        "Q2": {"question": "On a scale of 1 to 2, 1 meaning 'Yes' and 2 meaning 'No', is hard work important?",
               "use_case": "value", "answer_scale_min": 1, "answer_scale_max": 2, "answer_data_type": "ordinal"},
    }
    (root / "question_metadata.json").write_text(json.dumps(meta))
    demo = [{"D_INTERVIEW": i, "B_COUNTRY": "Great Britain" if i < 4 else "Iran"} for i in range(7)]
    _csv(root / "full" / "full_demographic_qa.tsv", demo, delimiter="\t")
    # UK (interviews 0-3): Q1 answers 2, 2, 1, -2 (missing code) -> 2 is the majority; Q2: 1, 2, 2, "" -> 2.
    # Iran (4-6): Q1 answers 1, 3, 3 -> 3; Q2: 1, 2, (empty) -> tie 1/2 -> the lower, 1.
    value = [
        {"D_INTERVIEW": 0, "Q1": 2, "Q2": 1}, {"D_INTERVIEW": 1, "Q1": 2, "Q2": 2}, {"D_INTERVIEW": 2, "Q1": 1, "Q2": 2},
        {"D_INTERVIEW": 3, "Q1": -2, "Q2": ""}, {"D_INTERVIEW": 4, "Q1": 1, "Q2": 1}, {"D_INTERVIEW": 5, "Q1": 3, "Q2": 2},
        {"D_INTERVIEW": 6, "Q1": 3, "Q2": ""},
    ]
    _csv(root / "full" / "full_value_qa.tsv", value, delimiter="\t")
    return root


def test_worldvaluesbench_folder(tmp_path):
    root = _wvb(tmp_path)
    items = {i.id: i for i in load_worldvaluesbench(root, min_responses=2)}
    assert sorted(items) == ["wvb:Iran:Q1", "wvb:Iran:Q2", "wvb:UK:Q1", "wvb:UK:Q2"]
    uk1 = items["wvb:UK:Q1"]
    assert uk1.group == "UK" and uk1.choices == ("1", "2", "3", "4") and uk1.values == (1.0, 2.0, 3.0, 4.0)
    assert uk1.answer == "2" and uk1.question_id == "Q1"
    assert uk1.question == "Answer as a typical person from the United Kingdom would. On a scale of 1 to 4, how important is family?"
    assert items["wvb:UK:Q2"].answer == "2"
    assert items["wvb:Iran:Q1"].answer == "3"
    assert items["wvb:Iran:Q2"].answer == "1"
    # min_responses: UK Q1 has 3 in-scale answers, Iran Q2 has 2.
    assert sorted(i.id for i in load_worldvaluesbench(root, min_responses=3)) == ["wvb:Iran:Q1", "wvb:UK:Q1", "wvb:UK:Q2"]
    assert [i.group for i in load_worldvaluesbench(root, countries=["Iran"], min_responses=2)] == ["Iran", "Iran"]
    with pytest.raises(FileNotFoundError, match=r"test_value_qa\.tsv|test_demographic_qa\.tsv"):
        load_worldvaluesbench(root, split="test")


def test_missing_local_file_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing file nor the hub id 'kellycyy/CulturalBench'"):
        load_culturalbench(tmp_path / "nope.csv")
