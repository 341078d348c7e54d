"""The paper's topic split, the per-question cap, and control derivation."""
from __future__ import annotations

import pytest

from culnig_ext.data.schema import MCItem, SchemaError
from culnig_ext.data.splits import NEUR_TOPICS, TEST_TOPICS, cap_per_question, make_control, split_items


def _items():
    out = []
    for topic in ("Food", "Work life", "Sport", "Education", "Family", "Holidays/Celebration/Leisure"):
        for country in ("US", "Iran"):
            for k in range(7):  # 7 items per (country, question): the cap keeps 5
                out.append(MCItem(
                    id=f"{country}:{topic}:{k}", group=country, question=f"{topic} question in {country}?",
                    choices=("a", "b", "c", "d"), answer_idx=k % 4, topic=topic, question_id=f"{topic}-q",
                ))
    return out


def test_topics_constants():
    assert NEUR_TOPICS == ("Food", "Work life", "Sport")
    assert TEST_TOPICS == ("Education", "Family", "Holidays/Celebration/Leisure")


def test_split_neur_test_all():
    items = _items()
    neur = split_items(items, "neur")
    test = split_items(items, "test")
    full = split_items(items, "all")
    assert {i.topic for i in neur} == {"Food", "Work life", "Sport"}
    assert {i.topic for i in test} == {"Education", "Family", "Holidays/Celebration/Leisure"}
    assert len(neur) == len(test) == 3 * 2 * 5 and len(full) == 6 * 2 * 5
    # The cap keeps the first five of each (country, question), in order.
    assert [i.id for i in neur if i.group == "Iran" and i.topic == "Sport"] == [f"Iran:Sport:{k}" for k in range(5)]
    assert set(i.id for i in neur) | set(i.id for i in test) == set(i.id for i in full)
    assert len(split_items(items, "all", max_per_question=None)) == len(items)


def test_cap_keeps_items_without_question_id():
    a = MCItem(id="a", group="US", question="q", choices=("x", "y"), answer_idx=0)
    b = MCItem(id="b", group="US", question="q", choices=("x", "y"), answer_idx=1)
    assert cap_per_question([a, b], 1) == [a, b]
    with pytest.raises(ValueError, match="max_per_question"):
        cap_per_question([a], 0)


def test_split_errors():
    no_topic = MCItem(id="n", group="US", question="q", choices=("x", "y"), answer_idx=0)
    with pytest.raises(SchemaError, match=r"item 'n': field 'topic': missing, so the 'neur' split cannot place it"):
        split_items([no_topic], "neur")
    odd = MCItem(id="o", group="US", question="q", choices=("x", "y"), answer_idx=0, topic="Music")
    with pytest.raises(SchemaError, match=r"item 'o': field 'topic': 'Music' is not a BLEnD topic"):
        split_items([odd], "test")
    assert split_items([no_topic, odd], "all") == [no_topic, odd]
    with pytest.raises(ValueError, match="unknown split 'train'"):
        split_items([no_topic], "train")


def test_make_control():
    items = _items()[:3]
    ctrl = make_control(items)
    assert [c.id for c in ctrl] == [f"{i.id}::ctrl" for i in items]
    for c, i in zip(ctrl, items):
        assert c.question == ""
        assert (c.choices, c.answer_idx, c.group, c.topic, c.question_id) == (i.choices, i.answer_idx, i.group, i.topic, i.question_id)
    # Originals and controls can be loaded together (distinct ids).
    assert len({x.id for x in items + ctrl}) == 6
