"""BLEnD's questions grouped by language (culnig_ext.data.languages) on a tiny BLEnD folder written here: groups
are languages (countries that share one pooled), the question is the local one (or the English one, without the
English-speaking countries), options and answers are BLEnD's, topics split as BLEnD's."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from culnig_ext.data import BLEND_COUNTRIES, load_items
from culnig_ext.data.languages import LANGUAGES
from culnig_ext.data.splits import BLEND_TOPICS, NEUR_TOPICS

COUNTRIES = ("US", "UK", "Greece", "Spain", "Mexico")
LOCAL_WORD = {"US": "what", "UK": "which", "Greece": "ποιο", "Spain": "qué", "Mexico": "cuál"}
QUESTIONS = [f"Q{i:02d}" for i in range(1, 13)]  # two per topic


def topic_of(qid: str) -> str:
    return BLEND_TOPICS[(int(qid[1:]) - 1) // 2]


def local_question(country: str, qid: str) -> str:
    return f"{LOCAL_WORD[country]} {LOCAL_WORD[country]}{qid[1:]} {country.lower()} ?"


def english_question(country: str, qid: str) -> str:
    return f"what is {qid.lower()} in {country.lower()} ?"


def answer(country: str, qid: str) -> str:
    return f"{country.lower()}{qid[1:]}"


def write_tiny_blend(root: Path, empty_local: tuple[str, str] | None = None) -> Path:
    """Five countries, twelve questions (two per BLEnD topic), each country's own top answer (count 2), so every
    question has four distractor candidates; ``empty_local``: (country, question) whose local text is empty."""
    (root / "annotations").mkdir(parents=True)
    (root / "questions").mkdir()
    for country in COUNTRIES:
        data = {qid: {"question": "" if (country, qid) == empty_local else local_question(country, qid),
                      "en_question": english_question(country, qid),
                      "annotations": [{"answers": [answer(country, qid)], "en_answers": [answer(country, qid)],
                                       "count": 2}]} for qid in QUESTIONS}
        (root / "annotations" / f"{country}_data.json").write_text(json.dumps(data, ensure_ascii=False))
        with open(root / "questions" / f"{country}_questions.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["", "ID", "Topic", "Source", "Question", "Translation"])
            for i, qid in enumerate(QUESTIONS):
                w.writerow([i, qid, topic_of(qid), "x", local_question(country, qid), english_question(country, qid)])
    return root


def test_local_items_are_grouped_by_language(tmp_path):
    root = write_tiny_blend(tmp_path / "blend")
    items = load_items(f"language:{root}", split="all", max_per_question=1)
    in_blend_order = [c for c in BLEND_COUNTRIES if c in COUNTRIES]  # US, UK, Spain, Mexico, Greece
    assert [it.group for it in items] == [LANGUAGES[c] for c in in_blend_order for _ in QUESTIONS]
    assert {it.group for it in items} == {"English", "Greek", "Spanish"}
    greek = next(it for it in items if it.id == "language:Greek:Greece:Q03:0")
    assert greek.question == "ποιο ποιο03 greece ?" and greek.answer == "greece03"
    assert greek.topic == topic_of("Q03") and greek.question_id == "Greece:Q03"
    assert set(greek.choices) - {"greece03"} <= {answer(c, "Q03") for c in COUNTRIES}
    assert len(greek.choices) == 4


def test_english_items_leave_out_the_english_speaking_countries(tmp_path):
    root = write_tiny_blend(tmp_path / "blend")
    local = load_items(f"language:{root}", split="test", max_per_question=1)
    english = load_items(f"language-en:{root}", split="test", max_per_question=1)
    assert {it.group for it in english} == {"Greek", "Spanish"}
    assert len(english) == 3 * 6  # three countries x the six questions of the held-out topics
    by_id = {it.id: it for it in local}
    for it in english:
        twin = by_id[it.id[: -len(":en")]]
        country, qid = it.id.split(":")[2:4]
        assert it.question == english_question(country, qid) and twin.question == local_question(country, qid)
        assert (it.choices, it.answer_idx, it.group, it.topic) == (twin.choices, twin.answer_idx, twin.group, twin.topic)
        assert it.topic not in NEUR_TOPICS


def test_a_question_without_local_text_is_left_out_of_both(tmp_path):
    root = write_tiny_blend(tmp_path / "blend", empty_local=("Greece", "Q07"))
    for source in (f"language:{root}", f"language-en:{root}"):
        ids = [it.id for it in load_items(source, split="all", max_per_question=1)]
        assert not any(":Greece:Q07:" in i for i in ids) and any(":Greece:Q08:" in i for i in ids)


def test_languages_filter_and_errors(tmp_path):
    root = write_tiny_blend(tmp_path / "blend")
    items = load_items(f"language:{root}", countries=["Greek"], max_per_question=1)
    assert {it.group for it in items} == {"Greek"} and len(items) == 12
    with pytest.raises(ValueError, match=r"no items in language\(s\) \['Klingon'\]"):
        load_items(f"language:{root}", countries=["Klingon"])
    with pytest.raises(FileNotFoundError, match="not a BLEnD folder"):
        load_items(f"language:{tmp_path}")
