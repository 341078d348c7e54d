"""CountryRC templates -> items, on the real template file and small made-up ones."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from culnig_ext.data.countries import BLEND_COUNTRIES, DISPLAY_NAMES, canonical_country, display_name
from culnig_ext.data.countryrc import (
    COUNTRYRC_EVAL_IDS,
    COUNTRYRC_SCORING_IDS,
    load_countryrc,
    read_templates,
    select_templates,
)
from culnig_ext.data.schema import SchemaError

from tests.shared_data import COUNTRYRC, needs_shared_data

REAL = COUNTRYRC / "data.json"


@needs_shared_data
def test_real_templates():
    templates = read_templates(REAL)
    assert len(templates) == 50
    assert [t.id for t in templates] == [str(i) for i in range(50)]
    # 20 templates name a decoy: 15-24 and 40-49 (checked in the file).
    assert [t.id for t in templates if t.has_decoy] == [str(i) for i in [*range(15, 25), *range(40, 50)]]
    assert len(select_templates(templates, COUNTRYRC_SCORING_IDS)) == 25
    assert [t.id for t in select_templates(templates, COUNTRYRC_EVAL_IDS)][:2] == ["25", "26"]


@needs_shared_data
def test_real_items_by_hand():
    raw = json.loads(REAL.read_text(encoding="utf-8"))
    items = load_countryrc(REAL, ids=["0", "15"], countries=["South_Korea", "US"], seed=0)
    assert [i.id for i in items] == ["countryrc:0:South_Korea", "countryrc:15:South_Korea", "countryrc:0:US", "countryrc:15:US"]
    plain = items[0]
    expected_context = raw[0]["context"].replace("{country}", "South Korea")
    assert plain.question == expected_context + "\n" + raw[0]["question"]
    assert plain.question.startswith("Last year, Emma decided to take a break from her regular routine and travel to South Korea.")
    assert plain.group == "South_Korea" and plain.answer == "South Korea" and plain.question_id == "0"
    assert len(plain.choices) == 4 and len(set(plain.choices)) == 4
    readable = {display_name(c) for c in BLEND_COUNTRIES}
    assert set(plain.choices) <= readable

    decoy = items[1]
    # Template 15 names {country} twice and {country_dummy} once; the decoy must be one of the distractors.
    names_in_text = [n for n in readable if n in decoy.question]
    decoys = [n for n in names_in_text if n != "South Korea"]
    assert len(decoys) == 1 and decoys[0] in decoy.choices and decoys[0] != decoy.answer
    assert decoy.question.count("South Korea") == 2

    us = items[2]
    assert "travel to the United States." in us.question and us.answer == "the United States" and us.group == "US"


@needs_shared_data
def test_seeded_and_balanced():
    a = load_countryrc(REAL, seed=0)
    assert a == load_countryrc(REAL, seed=0)
    assert len(a) == 50 * 16
    b = load_countryrc(REAL, seed=1)
    assert [i.id for i in a] == [i.id for i in b] and [i.choices for i in a] != [i.choices for i in b]
    # An item's draw depends only on (seed, template, country), not on the other countries loaded.
    korea = load_countryrc(REAL, countries=["South Korea"], seed=0)
    assert korea == [i for i in a if i.group == "South_Korea"]
    positions = [i.answer_idx for i in a]
    assert all(positions.count(k) > len(a) // 8 for k in range(4))
    assert {i.group for i in a} == set(BLEND_COUNTRIES)


@needs_shared_data
def test_pool_and_options():
    items = load_countryrc(REAL, ids=range(5), countries=["US"], pool=["US", "UK", "Spain", "Iran"], seed=0)
    for item in items:
        assert set(item.choices) == {"the United States", "the United Kingdom", "Spain", "Iran"}
    with pytest.raises(ValueError, match="need 3"):
        load_countryrc(REAL, ids=["0"], countries=["US"], pool=["US", "UK", "Spain"])
    with pytest.raises(ValueError, match=r"template id\(s\) not found: \['77'\]"):
        load_countryrc(REAL, ids=["0", "77"])


def _write(tmp_path, templates):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(templates))
    return path


@pytest.mark.parametrize(
    "templates, message",
    [
        ([{"id": "0", "context": "A trip to {country}.", "question": "Where?"}, {"id": "0", "context": "In {country}.", "question": "Q?"}],
         r"template 1 \(id '0'\): field 'id': duplicate id"),
        ([{"id": "0", "context": "A trip somewhere.", "question": "Where?"}], r"template 0 \(id '0'\): field 'context': has no \{country\}"),
        ([{"id": "0", "context": "A trip to {place}.", "question": "Where?"}], r"field 'context': unknown placeholder\(s\) \['place'\]"),
        ([{"id": "0", "context": "A trip to {country.", "question": "Where?"}], r"field 'context': braces do not parse"),
        ([{"id": "0", "context": "A trip to {country}."}], r"template 0: field 'question': missing"),
        ([], r"expected a non-empty JSON list"),
    ],
)
def test_template_errors(tmp_path, templates, message):
    with pytest.raises(SchemaError, match=re.escape(str(tmp_path / "t.json")) + ".*" + message):
        read_templates(_write(tmp_path, templates))


def test_made_up_template_with_decoy(tmp_path):
    path = _write(tmp_path, [{"id": 7, "context": "Not {country_dummy} but {country}.", "question": "Which?"}])
    (item,) = load_countryrc(path, countries=["Iran"], seed=5)
    assert item.id == "countryrc:7:Iran"
    m = re.fullmatch(r"Not (.+) but Iran\.\nWhich\?", item.question)
    assert m and m.group(1) in item.choices and m.group(1) != "Iran"


def test_country_names():
    assert canonical_country("united_states_of_america") == "US"
    assert canonical_country("Great Britain") == "UK"
    assert canonical_country("South Korea") == "South_Korea"
    assert canonical_country("zimbabwe") == "Zimbabwe"
    assert canonical_country("Sri Lanka") == "Sri_Lanka"
    assert display_name("South_Korea") == "South Korea" and display_name("Iran") == "Iran"
    assert display_name("Northern_Nigeria") == "Northern Nigeria"
    assert set(DISPLAY_NAMES) <= set(BLEND_COUNTRIES)
    for c in BLEND_COUNTRIES:
        assert canonical_country(c) == c and canonical_country(display_name(c)) == c
