"""The synthetic world: seeded, fictional (no real country name anywhere), answers distinct per question, frames
used for one purpose each, and item sets that pass the schema."""
from __future__ import annotations

import json

import pytest

from culnig_ext.data import synthetic
from culnig_ext.data.builtin import COUNTRYRC_PATH
from culnig_ext.data.countries import BLEND_COUNTRIES, display_name
from culnig_ext.data.jsonl import read_jsonl, write_jsonl
from culnig_ext.data.schema import MCItem, SchemaError, validate_items
from culnig_ext.data.splits import BLEND_TOPICS, make_control

WORLD = synthetic.make_world(8, 6, seed=0)


def all_items(world):
    return {"scoring": synthetic.scoring_items(world), "test": synthetic.heldout_items(world),
            "reading": synthetic.reading_items(world, split="scoring"),
            "reading_test": synthetic.reading_items(world, split="test")}


def real_names() -> set[str]:
    """Real countries from sources independent of the module's own list: BLEnD's, and pycountry's when installed."""
    names = {display_name(c) for c in BLEND_COUNTRIES} | {c.replace("_", " ") for c in BLEND_COUNTRIES}
    names |= {"Japan", "Peru", "Chad", "Mali", "Oman", "Iran", "Iraq", "Togo", "Cuba", "Fiji", "Laos", "Niger"}
    try:
        import pycountry
    except ImportError:
        return names
    return names | {c.name for c in pycountry.countries} | {getattr(c, "common_name", c.name) for c in pycountry.countries}


def test_seeded_and_sized():
    assert synthetic.make_world(8, 6, seed=0) == WORLD
    assert synthetic.make_world(8, 6, seed=1).countries != WORLD.countries
    assert len(WORLD.countries) == 8 and len(set(WORLD.countries)) == 8
    assert len(WORLD.facts) == 48
    # the first six question types cover BLEnD's six topics once each
    assert sorted(synthetic.qtype(q).topic for q in WORLD.qtypes) == sorted(BLEND_TOPICS)
    assert all_items(WORLD) == all_items(synthetic.make_world(8, 6, seed=0))


def test_no_real_country_names():
    real = real_names()
    texts = [it.question + " " + " ".join(it.choices) for items in all_items(WORLD).values() for it in items]
    for name in WORLD.countries:
        assert not any(r.casefold().replace(" ", "") in name.casefold() for r in real), name
    # the CountryRC templates name no country themselves, so the only countries in the texts are fictional
    for text in texts:
        for r in real:
            if len(r) > 3:
                assert f" {r} " not in f" {text} ", (r, text)
    assert synthetic.is_real_country("Xoman") and synthetic.is_real_country("new zealand")
    assert not synthetic.is_real_country("Korpexbon")


def test_answers_distinct_per_question_and_distractors_are_other_countries():
    for q in WORLD.qtypes:
        answers = [WORLD.answer(c, q) for c in WORLD.countries]
        assert len(set(answers)) == len(answers)
    for it in synthetic.scoring_items(WORLD):
        qtype = it.question_id.split(":")[0]
        others = {WORLD.answer(c, qtype) for c in WORLD.countries if c != it.group}
        assert it.answer == WORLD.answer(it.group, qtype)
        assert set(it.choices) - {it.answer} <= others and len(it.choices) == 4


def test_frames_are_disjoint_and_the_test_phrasings_never_trained_or_scored():
    frames = [synthetic.STATEMENT_FRAMES, synthetic.TRAIN_FRAMES, synthetic.SCORING_FRAMES, synthetic.TEST_FRAMES]
    flat = [f for group in frames for f in group]
    assert len(set(flat)) == len(flat)
    trained = {ex.prompt for ex in synthetic.training_examples(WORLD)}
    scored = {it.question for it in synthetic.scoring_items(WORLD)}
    tested = {it.question for it in synthetic.heldout_items(WORLD)}
    assert not tested & scored and not any(q in p for q in tested for p in trained)
    assert len(synthetic.training_examples(WORLD)) == 48 * 5  # 3 statements + 2 questions per fact


def test_items_by_hand():
    fact = WORLD.facts[0]
    noun = synthetic.qtype(fact.qtype).noun
    item = synthetic.scoring_items(WORLD)[0]
    assert item.id == f"synthetic-scoring:{fact.country}:{fact.qtype}:0:0"
    assert item.question == f"Which is the {noun} in {fact.country}?" and item.group == fact.country
    assert item.topic == synthetic.qtype(fact.qtype).topic and item.answer == fact.answer
    ex = synthetic.training_examples(WORLD)
    assert ex[0].prompt == f"In {fact.country}, the {noun} is" and ex[0].answer == fact.answer
    assert ex[3].prompt == f"Question: What is the {noun} of {fact.country}?\nAnswer:"
    assert len(synthetic.scoring_items(WORLD, draws=2)) == 48 * 2 * 2
    assert len(synthetic.heldout_items(WORLD)) == 48 * 2


def test_reading_items_name_the_answer_in_the_passage():
    raw = json.loads(COUNTRYRC_PATH.read_text(encoding="utf-8"))
    items = synthetic.reading_items(WORLD, split="scoring", per_country=3)
    assert len(items) == 8 * 3
    for it in items:
        assert it.answer == it.group and it.group in it.question.split("\n")[0]
        assert set(it.choices) <= set(WORLD.countries)
        template = raw[int(it.question_id)]
        assert it.question.endswith(template["question"])
    assert {int(it.question_id) for it in synthetic.reading_items(WORLD, split="test")} <= set(range(15, 30))
    with pytest.raises(ValueError, match="at least 4 countries"):
        synthetic.reading_items(synthetic.make_world(3, 2), split="scoring")


def test_sets_pass_the_schema_and_round_trip(tmp_path):
    for name, items in all_items(WORLD).items():
        validate_items(items)
        write_jsonl(items, tmp_path / f"{name}.jsonl")
        assert read_jsonl(tmp_path / f"{name}.jsonl") == items
    control = make_control(synthetic.scoring_items(WORLD))
    assert all(it.question == "" for it in control)


def test_world_round_trip_and_bad_input():
    assert synthetic.World.from_dict(json.loads(json.dumps(WORLD.to_dict()))) == WORLD
    bad = WORLD.to_dict()
    bad["qtypes"] = ["nope"]
    with pytest.raises(SchemaError, match="planted.json, field 'world': field 'qtypes'"):
        synthetic.World.from_dict(bad, where="planted.json, field 'world'")
    with pytest.raises(SchemaError, match="field 'format'"):
        synthetic.World.from_dict({"format": "other"})


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_countries=1), "n_countries must be an integer >= 2"),
    (dict(n_countries=13), "at most 12"),
    (dict(facts_per_country=0), "facts_per_country"),
    (dict(facts_per_country=13), "facts_per_country"),
])
def test_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic.make_world(**kwargs)


class OneTokenPerName:
    """A tokenizer stand-in: every word one token."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(range(len(text.split())))}


def test_check_names_refuses_single_token_names():
    with pytest.raises(ValueError, match="is 1 token"):
        synthetic.check_names(WORLD, OneTokenPerName())
    assert set(synthetic.check_names(WORLD, OneTokenPerName(), min_tokens=1).values()) == {1}
