"""BLEnD: the multiple-choice file/hub loader and the builder from raw annotations."""
from __future__ import annotations

import csv
import itertools
import json
import re
from math import comb
from pathlib import Path

import pytest

from culnig_ext.data.blend import extract_question, load_blend_mcq_file, load_blend_mcq_hub, read_topics
from culnig_ext.data.blend_annotations import SKIP_FEW_DISTRACTORS, SKIP_NO_GOLD, build_blend_items
from culnig_ext.data.countries import BLEND_COUNTRIES
from culnig_ext.data.schema import SchemaError

from tests.shared_data import BLEND, needs_shared_data
INSTR = ' Without any explanation, choose only one from the given alphabet choices(e.g., A, B, C). Provide as JSON format: {"answer_choice":""}\n\n'


def _prompt(question, options):
    return question + INSTR + "".join(f"{chr(65 + i)}. {o}\n" for i, o in enumerate(options)) + "\nAnswer:"


def _rows():
    """Four BLEnD-style rows: two for (US, Q1) [differ in options], one (US, Q2), one (South_Korea, Q1)."""
    def row(mcqid, qid, country, question, options, gold):
        letters = [chr(65 + i) for i in range(len(options))]
        return {
            "MCQID": mcqid, "ID": qid, "country": country, "prompt": _prompt(question, options),
            "choices": json.dumps(dict(zip(letters, options)), indent=4),
            "choice_countries": json.dumps(dict(zip(letters, [country, "UK", "Spain", "Iran"]))),
            "answer_idx": letters[options.index(gold)],
        }
    return [
        row("Q1_0", "Q1", "US", "What is a popular snack in the US?", ["fruit", "kimchi", "churros", "nuts"], "fruit"),
        row("Q1_1", "Q1", "US", "What is a popular snack in the US?", ["bread", "chips", "fruit", "rice"], "fruit"),
        row("Q2_0", "Q2", "US", "Which sport is the most popular in the US?", ["soccer", "american football", "cricket", "judo"], "american football"),
        row("Q1_2", "Q1", "South_Korea", "What is a popular snack in South Korea?", ["fruit", "kimchi", "churros", "nuts"], "kimchi"),
    ]


def _write(rows, path: Path):
    suffix = path.suffix
    if suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _questions_dir(tmp_path):
    d = tmp_path / "questions"
    d.mkdir()
    (d / "US_questions.csv").write_text(",ID,Topic,Source,Question,Translation\n0,Q1,Food,x,a,b\n1,Q2,Sport,x,c,d\n")
    (d / "South_Korea_questions.csv").write_text(",ID,Topic,Source,Question,Translation\n0,Q1,Food,x,a,b\n1,Q2,Sport,x,c,d\n")
    return d


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet"])
def test_mcq_file_in_each_format(tmp_path, suffix):
    path = _write(_rows(), tmp_path / f"mcq{suffix}")
    items = load_blend_mcq_file(path, questions_dir=_questions_dir(tmp_path))
    assert [i.id for i in items] == ["Q1_0", "Q1_1", "Q2_0", "Q1_2"]
    first = items[0]
    assert first.group == "US"
    assert first.question == "What is a popular snack in the US?"
    assert first.choices == ("fruit", "kimchi", "churros", "nuts") and first.answer_idx == 0
    assert items[1].answer_idx == 2 and items[1].answer == "fruit"
    assert items[2].answer == "american football" and items[2].topic == "Sport"
    assert items[3].group == "South_Korea" and items[3].answer == "kimchi" and items[3].topic == "Food"
    assert [i.question_id for i in items] == ["Q1", "Q1", "Q2", "Q1"]


def test_mcq_cap_and_country_filter(tmp_path):
    path = _write(_rows(), tmp_path / "mcq.jsonl")
    capped = load_blend_mcq_file(path, max_per_question=1)
    assert [i.id for i in capped] == ["Q1_0", "Q2_0", "Q1_2"]  # the (US, Q1) pair keeps its first row
    assert all(i.topic is None for i in capped)
    korea = load_blend_mcq_file(path, countries=["South Korea"])
    assert [i.id for i in korea] == ["Q1_2"]
    with pytest.raises(ValueError, match="unknown country 'Atlantis'"):
        load_blend_mcq_file(path, countries=["Atlantis"])


def test_extract_question():
    assert extract_question(_prompt("What do people eat?", ["a", "b"])) == "What do people eat?"
    # Without BLEnD's instruction, the question ends at the first option line.
    assert extract_question("  Which one?\n\nA. x\nB. y\n\nAnswer:") == "Which one?"
    with pytest.raises(ValueError, match="cannot find where the question ends"):
        extract_question("just some text without options")
    with pytest.raises(ValueError, match="no question"):
        extract_question(INSTR.lstrip() + "A. x\nB. y\n")


@pytest.mark.parametrize(
    "change, field",
    [
        ({"prompt": "no question marker here"}, "prompt"),
        ({"choices": "{not json"}, "choices"),
        ({"choices": json.dumps({"A": "x", "C": "y"})}, "choices"),
        ({"answer_idx": "E"}, "answer_idx"),
        ({"choices": json.dumps({"A": "same", "B": "Same", "C": "x", "D": "y"})}, "choices"),
    ],
)
def test_mcq_errors_name_row_and_field(tmp_path, change, field):
    rows = _rows()
    rows[2] = {**rows[2], **change}
    path = _write(rows, tmp_path / "mcq.csv")
    # Row 3 of the CSV; the prompts of rows 1-2 span several lines each, so it starts on a later line.
    with pytest.raises(SchemaError, match=rf"^{re.escape(str(path))}, row 3 \(line \d+\): .*field '{field}'"):
        load_blend_mcq_file(path)


def test_mcq_missing_column_and_unknown_topic(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "answer_idx"} for r in _rows()]
    path = _write(rows, tmp_path / "mcq.jsonl")
    with pytest.raises(SchemaError, match=rf"^{re.escape(str(path))}, line 1: field 'answer_idx': missing"):
        load_blend_mcq_file(path)
    rows = _rows()
    rows[3]["ID"] = "Q9"
    path = _write(rows, tmp_path / "mcq2.jsonl")
    with pytest.raises(SchemaError, match=r"line 4: field 'ID': question 'Q9' is not in the BLEnD question lists"):
        load_blend_mcq_file(path, questions_dir=_questions_dir(tmp_path))


def test_mcq_hub_path_calls_datasets(monkeypatch, tmp_path):
    import datasets

    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return _rows()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    items = load_blend_mcq_hub(questions_dir=_questions_dir(tmp_path), countries=["US"], max_per_question=5)
    assert calls == [(("nayeon212/BLEnD", "multiple-choice-questions"), {"split": "test"})]
    assert [i.id for i in items] == ["Q1_0", "Q1_1", "Q2_0"]
    assert items[2].topic == "Sport"


@needs_shared_data
def test_read_topics_real_and_conflict(tmp_path):
    topics = read_topics(BLEND / "questions")
    assert len(topics) == 500
    assert topics["Al-en-09"] == "Food"
    d = _questions_dir(tmp_path)
    (d / "UK_questions.csv").write_text(",ID,Topic\n0,Q1,Sport\n")
    with pytest.raises(SchemaError, match=r"UK_questions\.csv, row 1 \(line 2\): field 'Topic': question 'Q1' has topic 'Sport'"):
        read_topics(d)


# ---------------------------------------------------------------------------------------------------------------
# Raw annotations


@needs_shared_data
def test_annotations_real_question_by_hand():
    """South Korea, Al-en-09 ('What is a popular snack at an amusement park ...?'), checked against the files."""
    build = build_blend_items(BLEND, countries=["South_Korea"], seed=0)
    items = [i for i in build.items if i.question_id == "Al-en-09"]

    korea = json.loads((BLEND / "annotations" / "South_Korea_data.json").read_text(encoding="utf-8"))["Al-en-09"]
    # Hand check: Korea's groups are churros (4), then three answers with count 1 -> gold 'churros'.
    assert [(g["en_answers"][0], g["count"]) for g in korea["annotations"]][0] == ("churros", 4)
    # Other countries' top answers (first group of the highest count, count >= 2), read off the files by hand:
    # US/Algeria/Greece/Iran/West_Java 'cotton candy', UK 'candy floss', Spain 'french fries', Mexico 'crisps',
    # Assam 'ice cream' (tie of 2, listed first), Ethiopia 'cake', Northern_Nigeria 'shawarma', North_Korea 'candy',
    # China 'marshmallow'; Indonesia and Azerbaijan have no answer with count >= 2. None was given by Korea.
    expected = {"cotton candy", "candy floss", "french fries", "crisps", "ice cream", "cake", "shawarma", "candy", "marshmallow"}
    # The same set, computed independently from the JSON files.
    computed = set()
    for country in BLEND_COUNTRIES:
        if country == "South_Korea":
            continue
        groups = json.loads((BLEND / "annotations" / f"{country}_data.json").read_text(encoding="utf-8"))["Al-en-09"]["annotations"]
        groups = [g for g in groups if g["en_answers"]]
        top = max(g["count"] for g in groups)
        first = next(g for g in groups if g["count"] == top)
        if top >= 2:
            computed.add(first["en_answers"][0])
    assert computed == expected

    assert len(items) == 5  # C(9, 3) = 84 distinct draws >= 5
    assert [i.id for i in items] == [f"blend:South_Korea:Al-en-09:{k}" for k in range(5)]
    draws = set()
    for item in items:
        assert item.group == "South_Korea" and item.topic == "Food"
        assert item.question == "What is a popular snack at an amusement park in South Korea?"
        assert item.answer == "churros" and len(item.choices) == 4
        others = set(item.choices) - {"churros"}
        assert len(others) == 3 and others <= expected
        draws.add(frozenset(others))
    assert len(draws) == 5  # five different distractor draws

    # Without a cap, every distinct 3-subset of the 9 candidates is used once.
    every = [i for i in build_blend_items(BLEND, countries=["South_Korea"], max_per_question=None).items
             if i.question_id == "Al-en-09"]
    assert len(every) == comb(9, 3) == 84
    assert {frozenset(i.choices) - {"churros"} for i in every} == {frozenset(c) for c in itertools.combinations(expected, 3)}


@needs_shared_data
def test_annotations_skip_counts_real_data():
    build = build_blend_items(BLEND, countries=["US", "South_Korea"], seed=0)
    counts = build.skip_counts()
    # Every (country, question) is either built (1..5 items) or skipped with a reason.
    built = {(i.group, i.question_id) for i in build.items}
    skipped = {(s.country, s.question_id) for s in build.skipped}
    assert not built & skipped
    assert len(built) + len(skipped) == 2 * 500
    assert counts[SKIP_NO_GOLD] + counts[SKIP_FEW_DISTRACTORS] == len(skipped)
    # US Al-en-01 (top answer 'fruit' with count 2) is built; check a no-gold skip by hand: a question whose US top
    # count is 1.
    us = json.loads((BLEND / "annotations" / "US_data.json").read_text(encoding="utf-8"))
    low = [qid for qid, q in us.items() if not q["annotations"] or max(g["count"] for g in q["annotations"]) < 2]
    assert low and all(("US", qid) in skipped for qid in low)
    assert ("US", "Al-en-01") in built


def _synthetic(tmp_path, data: dict[str, dict]) -> Path:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "questions").mkdir()
    for country, questions in data.items():
        out = {}
        for qid, groups in questions.items():
            out[qid] = {
                "question": "local", "en_question": f"{qid} question in {country}?",
                "annotations": [{"answers": a, "en_answers": a, "count": c} for a, c in groups],
                "idks": {},
            }
        (tmp_path / "annotations" / f"{country}_data.json").write_text(json.dumps(out))
        rows = "".join(f"{i},{qid},Food,x,y,z\n" for i, qid in enumerate(questions))
        (tmp_path / "questions" / f"{country}_questions.csv").write_text(",ID,Topic,Source,Question,Translation\n" + rows)
    return tmp_path


def test_annotations_rules_on_synthetic_data(tmp_path):
    root = _synthetic(tmp_path, {
        # US: tie at 3 -> first listed ('Apple'); 'Pear' was also given by US annotators (second group).
        "US": {"q": [(["Apple", "apples"], 3), (["PEAR"], 3), (["plum"], 1)], "r": [(["x"], 1)]},
        "UK": {"q": [(["pear"], 2)], "r": [(["y"], 5)]},
        "Spain": {"q": [(["Banana"], 4)], "r": [(["z"], 5)]},
        "Iran": {"q": [(["banana "], 2)], "r": [(["w"], 5)]},  # duplicate of Spain's after case/space folding
        "China": {"q": [([], 9), (["Kiwi"], 2)], "r": [(["v"], 5)]},  # a group without English answers is ignored
        "Mexico": {"q": [(["Mango"], 1)], "r": [(["u"], 5)]},  # count 1 < min_count: not a distractor
        "Greece": {"q": [(["Fig"], 2)], "r": [(["t"], 5)]},
    })
    build = build_blend_items(root, countries=["US"], seed=3)
    us_q = [i for i in build.items if i.question_id == "q"]
    # Candidates: Banana (Spain), Kiwi (China), Fig (Greece); pear excluded (US gave 'PEAR'), Iran's is a repeat,
    # Mexico's count is too low -> exactly one 3-subset -> one item.
    assert len(us_q) == 1
    assert us_q[0].answer == "Apple"
    assert set(us_q[0].choices) == {"Apple", "Banana", "Kiwi", "Fig"}
    assert us_q[0].question == "q question in US?"
    # US 'r' has top count 1 -> no gold.
    assert [(s.country, s.question_id, s.reason) for s in build.skipped] == [("US", "r", SKIP_NO_GOLD)]

    # With min_count=1, Mexico's Mango joins the candidates: C(4,3) = 4 draws, all used (max 5).
    build1 = build_blend_items(root, countries=["US"], seed=3, min_count=1)
    us_q1 = [i for i in build1.items if i.question_id == "q"]
    assert len(us_q1) == 4
    assert {frozenset(i.choices) for i in us_q1} == {
        frozenset({"Apple", *c}) for c in itertools.combinations(["Banana", "Kiwi", "Fig", "Mango"], 3)
    }

    # UK 'q': gold 'pear'; candidates Apple (US), Banana, Kiwi, Fig (only the target's own answers exclude) -> 4 items.
    uk = [i for i in build_blend_items(root, countries=["UK"], seed=3).items if i.question_id == "q"]
    assert len(uk) == comb(4, 3) and all(i.answer == "pear" for i in uk)

    # Too few distractors: restrict the pool to two other countries.
    few = build_blend_items(root, countries=["US"], distractor_countries=["US", "Spain", "Greece"], seed=3)
    assert ("US", "q", SKIP_FEW_DISTRACTORS) in [(s.country, s.question_id, s.reason) for s in few.skipped]
    assert few.skip_counts() == {SKIP_NO_GOLD: 1, SKIP_FEW_DISTRACTORS: 1}


@needs_shared_data
def test_annotations_seeded_and_independent_of_loaded_countries():
    a = build_blend_items(BLEND, countries=["South_Korea"], seed=0).items
    b = build_blend_items(BLEND, countries=["South_Korea"], seed=0).items
    assert a == b
    c = build_blend_items(BLEND, countries=["US", "South_Korea"], seed=0).items
    assert [i for i in c if i.group == "South_Korea"] == a
    d = build_blend_items(BLEND, countries=["South_Korea"], seed=1).items
    assert [i.id for i in d] == [i.id for i in a]  # same pairs built ...
    assert [i.choices for i in d] != [i.choices for i in a]  # ... with other draws
    # Gold positions are spread over all four options.
    positions = [i.answer_idx for i in a]
    assert all(positions.count(k) > len(a) // 8 for k in range(4))


def test_annotations_errors(tmp_path):
    root = _synthetic(tmp_path, {"US": {"q": [(["a"], 2)]}, "UK": {"q": [(["b"], 2)]}})
    (root / "questions" / "UK_questions.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"UK_questions\.csv"):
        build_blend_items(root, countries=["UK"])
    (root / "annotations" / "US_data.json").write_text('{"q": {"en_question": "", "annotations": []}}')
    with pytest.raises(SchemaError, match=r"US_data\.json, question 'q': field 'en_question'"):
        build_blend_items(root, countries=["US"])
    with pytest.raises(ValueError, match="unknown country 'Spain'"):
        build_blend_items(root, countries=["Spain"])

