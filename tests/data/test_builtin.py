"""The shipped data sets: structure and the properties promised in their description."""
from __future__ import annotations

import json
from collections import Counter

from culnig_ext.data import builtin
from culnig_ext.data.countries import display_name
from culnig_ext.data.countryrc import read_templates
from culnig_ext.data.jsonl import read_jsonl
from culnig_ext.data.splits import BLEND_TOPICS


def test_cultural_structure():
    items = read_jsonl(builtin.CULTURAL_PATH)
    assert len(items) == 144
    assert tuple(dict.fromkeys(i.group for i in items)) == builtin.BUILTIN_CULTURAL_COUNTRIES
    assert builtin.BUILTIN_CULTURAL_COUNTRIES == ("US", "UK", "South_Korea", "China", "Mexico", "Spain", "Iran", "Ethiopia")
    per_pair = Counter((i.group, i.topic) for i in items)
    assert set(t for _, t in per_pair) == set(BLEND_TOPICS)
    assert set(per_pair.values()) == {3} and len(per_pair) == 8 * 6
    # Each question id is asked once per country, always under one topic.
    by_qid = Counter(i.question_id for i in items)
    assert len(by_qid) == 18 and set(by_qid.values()) == {8}


def test_cultural_options():
    items = read_jsonl(builtin.CULTURAL_PATH)
    gold = {(i.question_id, i.group): i.answer for i in items}
    for item in items:
        assert len(item.choices) == 4
        assert display_name(item.group) in item.question, item.id
        for choice in item.choices:
            assert len(choice.split()) in range(1, 5), (item.id, choice)
        # Distractors are other countries' answers to the same question, never the item's own answer.
        others = {a for (qid, g), a in gold.items() if qid == item.question_id and g != item.group}
        for k, choice in enumerate(item.choices):
            if k != item.answer_idx:
                assert choice in others and choice != item.answer, (item.id, choice)
    # Gold positions are balanced.
    assert Counter(i.answer_idx for i in items) == {0: 36, 1: 36, 2: 36, 3: 36}


def test_cultural_spot_checks():
    items = {i.id: i for i in read_jsonl(builtin.CULTURAL_PATH)}
    assert items["cultural:South_Korea:food-1"].answer == "Kimchi"
    assert items["cultural:Iran:holiday-1"].answer == "Nowruz"
    assert items["cultural:Ethiopia:work-1"].answer == "Birr"
    assert items["cultural:UK:holiday-3"].question == "Which famous landmark is a popular tourist destination in the United Kingdom?"


def test_general_structure():
    items = read_jsonl(builtin.GENERAL_PATH)
    assert len(items) == 64
    assert Counter(i.group for i in items) == {"science": 16, "arithmetic": 16, "vocabulary": 16, "physical_commonsense": 16}
    assert all(len(i.choices) == 4 for i in items)
    assert Counter(i.answer_idx for i in items) == {0: 16, 1: 16, 2: 16, 3: 16}
    by_q = {i.question: i.answer for i in items}
    # Arithmetic answers recomputed here.
    assert by_q["What is 7 times 8?"] == str(7 * 8)
    assert by_q["What is 3 plus 4 times 2?"] == str(3 + 4 * 2)
    assert by_q["What is 1000 divided by 8?"] == str(1000 // 8)
    assert by_q["What is 2 to the power of 5?"] == str(2 ** 5)
    assert by_q["What is 0.5 plus 0.25?"] == str(0.5 + 0.25)
    assert by_q["What is the chemical symbol for gold?"] == "Au"


def test_countryrc_templates():
    templates = read_templates(builtin.COUNTRYRC_PATH)
    assert [t.id for t in templates] == [str(i) for i in range(30)]
    assert builtin.BUILTIN_COUNTRYRC_SCORING_IDS == tuple(str(i) for i in range(15))
    assert builtin.BUILTIN_COUNTRYRC_EVAL_IDS == tuple(str(i) for i in range(15, 30))
    assert [t.id for t in templates if t.has_decoy] == [str(i) for i in [10, 11, 12, 13, 14, 25, 26, 27, 28, 29]]
    # Same file format as the real CountryRC file.
    raw = json.loads(builtin.COUNTRYRC_PATH.read_text(encoding="utf-8"))
    assert all(set(r) == {"id", "context", "question"} for r in raw)
