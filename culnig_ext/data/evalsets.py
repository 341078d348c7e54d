"""Evaluation sets beyond BLEnD, each converted to ``MCItem``s, from the Hugging Face hub (``datasets``) or from a
local file with the hub's columns (``.json``/``.jsonl``/``.csv``/``.tsv``/``.parquet``; nested columns such as
CommonsenseQA's ``choices`` may be JSON text in CSV cells).

==================  ===========================================  ==================================================
set                 hub id (config, split)                       columns used
==================  ===========================================  ==================================================
CulturalBench       ``kellycyy/CulturalBench`` (CulturalBench-   data_idx, question_idx, prompt_question,
                    Easy, test)                                  prompt_option_a..d, answer, country
NormAd              ``akhilayerukola/NormAd`` (train)            ID, Country, Story, Gold Label
CommonsenseQA       ``tau/commonsense_qa`` (validation)          id, question, choices {label, text}, answerKey
QNLI                ``nyu-mll/glue`` (qnli, validation)          idx, question, sentence, label
MRPC                ``nyu-mll/glue`` (mrpc, test)                idx, sentence1, sentence2, label
WorldValuesBench    local folder only (raw WVS data may not be   question_metadata.json, <split>/<split>_demographic_
                    redistributed, so it is not on the hub)      qa.tsv (D_INTERVIEW, B_COUNTRY), <split>/<split>_
                                                                 value_qa.tsv (D_INTERVIEW, Q1, Q2, ...)
==================  ===========================================  ==================================================

Country columns are mapped onto BLEnD's group names (``canonical_country``); non-cultural sets use the set's name as
group. Splits follow the reference (CULNIG's dataset.py).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

from culnig_ext._utils.textfile import utf8_errors
from culnig_ext.data.countries import canonical_country, display_name
from culnig_ext.data.schema import MCItem, SchemaError, check_unique_ids
from culnig_ext.data.tabular import Row, hub_rows, iter_rows, read_rows, require_columns

CULTURALBENCH_HUB = ("kellycyy/CulturalBench", "CulturalBench-Easy", "test")
NORMAD_HUB = ("akhilayerukola/NormAd", None, "train")
COMMONSENSEQA_HUB = ("tau/commonsense_qa", None, "validation")
QNLI_HUB = ("nyu-mll/glue", "qnli", "validation")
MRPC_HUB = ("nyu-mll/glue", "mrpc", "test")

NORMAD_CHOICES = ("yes", "no", "neutral")
QNLI_CHOICES = ("yes", "no")  # label 0 = entailment (the sentence answers the question)
MRPC_CHOICES = ("no", "yes")  # label 1 = equivalent


def load_rows(source: str | Path, hub: tuple[str, str | None, str], *, split: str | None = None) -> list[Row]:
    """Rows from a local file when ``source`` is an existing path, else from the hub via ``datasets``."""
    path = Path(source)
    if path.is_file():
        return read_rows(path)
    hub_id, config, default_split = hub
    split = split or default_split
    if str(source) != hub_id:
        raise FileNotFoundError(f"{source!r} is neither an existing file nor the hub id {hub_id!r}")
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("loading from the Hugging Face hub needs 'datasets': pip install 'culnig_ext[hub]'") from exc
    dataset = datasets.load_dataset(hub_id, config, split=split) if config else datasets.load_dataset(hub_id, split=split)
    return hub_rows(dataset, f"{hub_id} [{config or 'default'}/{split}]")


def text_field(row: Row, column: str) -> str:
    value = row.data[column]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not (isinstance(value, float) and math.isnan(value)):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise SchemaError(f"{row.where}: field {column!r}: expected non-empty text, got {value!r}")
    return value.strip()


def int_field(row: Row, column: str) -> int:
    value = row.data[column]
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            return int(value)
        return int(str(value).strip())
    except ValueError:
        raise SchemaError(f"{row.where}: field {column!r}: expected an integer, got {value!r}") from None


def make_item(row: Row, **kwargs: Any) -> MCItem:
    try:
        return MCItem(**kwargs)
    except SchemaError as exc:
        raise SchemaError(f"{row.where}: {exc}") from exc


def _finish(items: list[MCItem], places: list[str], name: str) -> list[MCItem]:
    check_unique_ids(items, places=places)
    if not items:
        raise SchemaError(f"{name}: no items (after filtering)")
    return items


def _country_filter(countries: Iterable[str] | None) -> set[str] | None:
    if countries is None:
        return None
    if isinstance(countries, str):
        raise TypeError(f"countries must be a list of names, not the string {countries!r}")
    return {canonical_country(c) for c in countries}


def load_culturalbench(
    source: str | Path = CULTURALBENCH_HUB[0], *, split: str | None = None, countries: Iterable[str] | None = None
) -> list[MCItem]:
    """CulturalBench-Easy: 4-option questions; group = country (BLEnD names where they match), options in the
    data set's order, id ``culturalbench:<data_idx>``, question_id = question_idx."""
    wanted = _country_filter(countries)
    items, places = [], []
    for row in load_rows(source, CULTURALBENCH_HUB, split=split):
        require_columns(row, ("data_idx", "prompt_question", "prompt_option_a", "prompt_option_b",
                              "prompt_option_c", "prompt_option_d", "answer", "country"))
        group = canonical_country(text_field(row, "country"))
        if wanted is not None and group not in wanted:
            continue
        letter = text_field(row, "answer").upper()
        if letter not in ("A", "B", "C", "D"):
            raise SchemaError(f"{row.where}: field 'answer': expected A, B, C or D, got {row.data['answer']!r}")
        qidx = row.data.get("question_idx")
        items.append(make_item(
            row,
            id=f"culturalbench:{text_field(row, 'data_idx')}",
            group=group,
            question=text_field(row, "prompt_question"),
            choices=tuple(text_field(row, f"prompt_option_{x}") for x in "abcd"),
            answer_idx="ABCD".index(letter),
            question_id=None if qidx is None or str(qidx).strip() == "" else str(qidx).strip(),
        ))
        places.append(row.where)
    return _finish(items, places, "CulturalBench")


def load_normad(
    source: str | Path = NORMAD_HUB[0], *, split: str | None = None, countries: Iterable[str] | None = None
) -> list[MCItem]:
    """NormAd: does the story's behaviour fit the country's social norms? Options yes/no/neutral (the data set's
    gold labels); group = country; id ``normad:<ID>``."""
    wanted = _country_filter(countries)
    items, places = [], []
    for row in load_rows(source, NORMAD_HUB, split=split):
        require_columns(row, ("ID", "Country", "Story", "Gold Label"))
        group = canonical_country(text_field(row, "Country"))
        if wanted is not None and group not in wanted:
            continue
        label = text_field(row, "Gold Label").lower()
        if label not in NORMAD_CHOICES:
            raise SchemaError(f"{row.where}: field 'Gold Label': expected one of {NORMAD_CHOICES}, got {label!r}")
        question = (
            f"Country: {display_name(group)}\nStory: {text_field(row, 'Story')}\n"
            "Does the behavior in the story fit the social norms of this country?"
        )
        items.append(make_item(
            row, id=f"normad:{text_field(row, 'ID')}", group=group, question=question, choices=NORMAD_CHOICES,
            answer_idx=NORMAD_CHOICES.index(label),
        ))
        places.append(row.where)
    return _finish(items, places, "NormAd")


def csqa_choices(row: Row) -> tuple[list[str], list[str]]:
    value = row.data["choices"]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{row.where}: field 'choices': not JSON ({exc.msg})") from exc
    if not isinstance(value, Mapping) or not isinstance(value.get("label"), list) or not isinstance(value.get("text"), list):
        raise SchemaError(f"{row.where}: field 'choices': expected {{'label': [...], 'text': [...]}}, got {value!r}")
    labels, texts = [str(x).strip() for x in value["label"]], value["text"]
    if len(labels) != len(texts):
        raise SchemaError(f"{row.where}: field 'choices': {len(labels)} labels but {len(texts)} texts")
    return labels, texts


def load_commonsenseqa(source: str | Path = COMMONSENSEQA_HUB[0], *, split: str | None = None) -> list[MCItem]:
    """CommonsenseQA (validation by default; the test split has no answers): 5 options; group ``commonsenseqa``."""
    items, places = [], []
    for row in load_rows(source, COMMONSENSEQA_HUB, split=split):
        require_columns(row, ("id", "question", "choices", "answerKey"))
        labels, texts = csqa_choices(row)
        key = str(row.data["answerKey"] or "").strip()
        if key not in labels:
            raise SchemaError(f"{row.where}: field 'answerKey': {key!r} is not one of the labels {labels}")
        items.append(make_item(
            row, id=f"commonsenseqa:{text_field(row, 'id')}", group="commonsenseqa", question=text_field(row, "question"),
            choices=tuple(texts), answer_idx=labels.index(key),
        ))
        places.append(row.where)
    return _finish(items, places, "CommonsenseQA")


def binary_label(row: Row) -> int:
    label = int_field(row, "label")
    if label not in (0, 1):
        raise SchemaError(f"{row.where}: field 'label': expected 0 or 1 (unlabelled split?), got {label}")
    return label


def load_qnli(source: str | Path = QNLI_HUB[0], *, split: str | None = None) -> list[MCItem]:
    """GLUE QNLI (validation by default): does the sentence answer the question? Options yes/no (label 0 =
    entailment = yes); group ``qnli``."""
    items, places = [], []
    for row in load_rows(source, QNLI_HUB, split=split):
        require_columns(row, ("idx", "question", "sentence", "label"))
        question = (
            f"Question: {text_field(row, 'question')}\nSentence: {text_field(row, 'sentence')}\n"
            "Does the sentence contain the answer to the question?"
        )
        items.append(make_item(
            row, id=f"qnli:{int_field(row, 'idx')}", group="qnli", question=question, choices=QNLI_CHOICES,
            answer_idx=binary_label(row),
        ))
        places.append(row.where)
    return _finish(items, places, "QNLI")


def load_mrpc(source: str | Path = MRPC_HUB[0], *, split: str | None = None) -> list[MCItem]:
    """GLUE MRPC (test by default, as in the reference): are the two sentences paraphrases? Options no/yes (label
    1 = equivalent); group ``mrpc``."""
    items, places = [], []
    for row in load_rows(source, MRPC_HUB, split=split):
        require_columns(row, ("idx", "sentence1", "sentence2", "label"))
        question = (
            f"Sentence 1: {text_field(row, 'sentence1')}\nSentence 2: {text_field(row, 'sentence2')}\n"
            "Do the two sentences mean the same thing?"
        )
        items.append(make_item(
            row, id=f"mrpc:{int_field(row, 'idx')}", group="mrpc", question=question, choices=MRPC_CHOICES,
            answer_idx=binary_label(row),
        ))
        places.append(row.where)
    return _finish(items, places, "MRPC")


def load_worldvaluesbench(
    root: str | Path,
    *,
    countries: Iterable[str] | None = None,
    split: str = "full",
    min_responses: int = 10,
) -> list[MCItem]:
    """WorldValuesBench from its local folder: one item per (country, value question) with at least
    ``min_responses`` in-scale answers.

    Options are the scale points ``"1"``..``"N"`` (``values`` = their numbers, for alignment scores); the gold is
    the country's most frequent answer (ties: the lowest scale point). Answers outside the question's scale (the
    survey's negative missing-value codes) and empty cells are not counted. Group = country (BLEnD names where they
    match, e.g. ``Great Britain`` -> ``UK``); the question asks to answer as a typical person from the country;
    id ``wvb:<Country>:<Q>``.

    Raises:
        FileNotFoundError: for a missing metadata or split file.
        SchemaError: for malformed metadata or rows (naming file and row/question).
    """
    root = Path(root)
    meta_path = root / "question_metadata.json"
    demo_path = root / split / f"{split}_demographic_qa.tsv"
    value_path = root / split / f"{split}_value_qa.tsv"
    for p in (meta_path, demo_path, value_path):
        if not p.is_file():
            raise FileNotFoundError(f"missing WorldValuesBench file {p}")
    with utf8_errors(meta_path, SchemaError), open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    if not isinstance(meta, dict):
        raise SchemaError(f"{meta_path}: expected an object keyed by question id")
    scales: dict[str, tuple[str, int, int]] = {}
    for qid, info in meta.items():
        if not isinstance(info, dict) or info.get("use_case") != "value" or info.get("answer_data_type") != "ordinal":
            continue
        lo, hi = info.get("answer_scale_min"), info.get("answer_scale_max")
        text = info.get("question")
        if not (isinstance(lo, int) and isinstance(hi, int) and lo < hi) or not isinstance(text, str) or not text.strip():
            raise SchemaError(f"{meta_path}, question {qid!r}: field 'answer_scale_min/max' or 'question': invalid")
        scales[qid] = (text.strip(), lo, hi)
    wanted = _country_filter(countries)
    country_of: dict[str, str] = {}
    for row in iter_rows(demo_path):
        require_columns(row, ("D_INTERVIEW", "B_COUNTRY"))
        group = canonical_country(text_field(row, "B_COUNTRY"))
        if wanted is None or group in wanted:
            country_of[text_field(row, "D_INTERVIEW")] = group
    counts: dict[tuple[str, str], Counter[int]] = {}
    for row in iter_rows(value_path):
        require_columns(row, ("D_INTERVIEW",))
        group = country_of.get(text_field(row, "D_INTERVIEW"))
        if group is None:
            continue
        for qid, (_, lo, hi) in scales.items():
            cell = row.data.get(qid)
            if cell is None or str(cell).strip() in ("", "nan"):
                continue
            try:
                answer = int(float(str(cell).strip()))
            except ValueError:
                raise SchemaError(f"{row.where}: field {qid!r}: expected a number, got {cell!r}") from None
            if lo <= answer <= hi:
                counts.setdefault((group, qid), Counter())[answer] += 1
    items: list[MCItem] = []
    groups = list(dict.fromkeys(country_of.values()))
    for group in groups:
        for qid, (text, lo, hi) in scales.items():
            dist = counts.get((group, qid))
            if dist is None or sum(dist.values()) < min_responses:
                continue
            scale = list(range(lo, hi + 1))
            best = max(scale, key=lambda v: (dist[v], -v))
            items.append(MCItem(
                id=f"wvb:{group}:{qid}",
                group=group,
                question=f"Answer as a typical person from {display_name(group)} would. {text}",
                choices=tuple(str(v) for v in scale),
                answer_idx=scale.index(best),
                question_id=qid,
                values=tuple(float(v) for v in scale),
            ))
    if not items:
        raise SchemaError(f"{root}: no WorldValuesBench items (countries {sorted(wanted) if wanted else 'all'}, "
                          f"min_responses={min_responses})")
    return items
