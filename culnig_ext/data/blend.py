"""BLEnD multiple-choice questions: the Hugging Face data set ``nayeon212/BLEnD`` (config
``multiple-choice-questions``) or a local JSON/JSONL/CSV/Parquet file with the same columns.

Columns used: ``MCQID`` (item id), ``ID`` (question id), ``country``, ``prompt`` (BLEnD's full instruction prompt,
from which the question is extracted), ``choices`` (JSON object letter -> option, or such a dict) and
``answer_idx`` (the gold letter). ``choice_countries`` is not needed. Topics come from BLEnD's question lists
(``<Country>_questions.csv`` with ``ID, Topic, ...``) when ``questions_dir`` is given.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from culnig_ext.data.countries import BLEND_COUNTRIES, canonical_country, resolve_countries
from culnig_ext.data.schema import MCItem, SchemaError, check_unique_ids
from culnig_ext.data.splits import cap_per_question
from culnig_ext.data.tabular import Row, hub_rows, read_rows, require_columns

BLEND_HUB_ID = "nayeon212/BLEnD"
BLEND_MCQ_CONFIG = "multiple-choice-questions"
BLEND_MCQ_SPLIT = "test"
BLEND_MCQ_COLUMNS = ("MCQID", "ID", "country", "prompt", "choices", "answer_idx")

# BLEnD's prompt is "<question> Without any explanation, choose only one from the given alphabet choices(e.g.,
# A, B, C). Provide as JSON format: {"answer_choice":""}\n\nA. ...\nB. ...\n\nAnswer:".
_INSTRUCTION_START = re.compile(r"\s*Without any explanation,\s*choose only one", re.IGNORECASE)
_FIRST_OPTION = re.compile(r"(?:^|\n)\s*A\s*[.)]\s")


def extract_question(prompt: str) -> str:
    """The question part of a BLEnD multiple-choice prompt.

    Takes the text before BLEnD's instruction ("Without any explanation, choose only one ..."); if the instruction
    is missing, the text before the first option line (``"A. ..."``).

    Raises:
        ValueError: if neither marker is found or the question part is empty.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    m = _INSTRUCTION_START.search(prompt)
    if m is None:
        m = _FIRST_OPTION.search(prompt)
    if m is None:
        raise ValueError(
            "cannot find where the question ends: expected BLEnD's instruction 'Without any explanation, choose "
            f"only one ...' or an option line 'A. ...' (prompt starts {prompt[:80]!r})"
        )
    question = prompt[: m.start()].strip()
    if not question:
        raise ValueError(f"the prompt has no question before the instruction/options (prompt starts {prompt[:80]!r})")
    return question


def read_topics(questions_dir: str | Path) -> dict[str, str]:
    """Map BLEnD question IDs to topics from every ``<Country>_questions.csv`` in ``questions_dir``.

    Raises:
        FileNotFoundError: if the folder has no ``*_questions.csv``.
        SchemaError: for a missing column/value or an ID given two different topics, naming file and row.
    """
    folder = Path(questions_dir)
    files = sorted(folder.glob("*_questions.csv"))
    if not files:
        raise FileNotFoundError(f"no <Country>_questions.csv files in {folder}")
    topics: dict[str, str] = {}
    origin: dict[str, str] = {}
    for path in files:
        for row in read_rows(path):
            require_columns(row, ("ID", "Topic"))
            qid, topic = str(row.data["ID"]).strip(), str(row.data["Topic"]).strip()
            if not qid or not topic:
                raise SchemaError(f"{row.where}: field {'ID' if not qid else 'Topic'!r}: empty")
            if qid in topics and topics[qid] != topic:
                raise SchemaError(
                    f"{row.where}: field 'Topic': question {qid!r} has topic {topic!r} here but "
                    f"{topics[qid]!r} in {origin[qid]}"
                )
            topics.setdefault(qid, topic)
            origin.setdefault(qid, row.where)
    return topics


def _parse_choices(value: Any, where: str) -> dict[str, str]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{where}: field 'choices': not a JSON object ({exc.msg})") from exc
    if not isinstance(value, Mapping) or not value:
        raise SchemaError(f"{where}: field 'choices': expected a non-empty object letter -> option, got {value!r}")
    letters = sorted(value)
    expected = [chr(ord("A") + i) for i in range(len(letters))]
    if letters != expected:
        raise SchemaError(f"{where}: field 'choices': keys must be the letters {expected}, got {letters}")
    out: dict[str, str] = {}
    for letter in letters:
        option = value[letter]
        if isinstance(option, (int, float)) and not isinstance(option, bool):
            option = str(option)  # numeric answers (e.g. "how many ...") may have been parsed as numbers
        if not isinstance(option, str):
            raise SchemaError(f"{where}: field 'choices': option {letter} must be text, got {option!r}")
        out[letter] = option.strip()
    return out


def mcq_row_to_item(row: Row, topics: Mapping[str, str] | None = None) -> MCItem:
    """Convert one BLEnD multiple-choice row to an ``MCItem`` (group = BLEnD country name).

    Raises:
        SchemaError: naming the row and the field.
    """
    require_columns(row, BLEND_MCQ_COLUMNS)
    d = row.data
    try:
        question = extract_question(d["prompt"])
    except ValueError as exc:
        raise SchemaError(f"{row.where}: field 'prompt': {exc}") from exc
    choices = _parse_choices(d["choices"], row.where)
    letter = str(d["answer_idx"]).strip()
    if letter not in choices:
        raise SchemaError(f"{row.where}: field 'answer_idx': {letter!r} is not one of the choice letters {sorted(choices)}")
    qid = str(d["ID"]).strip()
    topic = None
    if topics is not None:
        if qid not in topics:
            raise SchemaError(f"{row.where}: field 'ID': question {qid!r} is not in the BLEnD question lists")
        topic = topics[qid]
    country = str(d["country"]).strip()
    if not country:
        raise SchemaError(f"{row.where}: field 'country': empty")
    try:
        return MCItem(
            id=str(d["MCQID"]).strip(),
            group=canonical_country(country),
            question=question,
            choices=tuple(choices[k] for k in sorted(choices)),
            answer_idx=ord(letter) - ord("A"),
            topic=topic,
            question_id=qid or None,
        )
    except SchemaError as exc:
        raise SchemaError(f"{row.where}: {exc}") from exc


def _rows_to_items(
    rows: Iterable[Row],
    *,
    questions_dir: str | Path | None,
    countries: Iterable[str] | None,
    max_per_question: int | None,
) -> list[MCItem]:
    topics = read_topics(questions_dir) if questions_dir is not None else None
    wanted = set(resolve_countries(countries, known=BLEND_COUNTRIES)) if countries is not None else None
    items: list[MCItem] = []
    places: list[str] = []
    for row in rows:
        item = mcq_row_to_item(row, topics)
        if wanted is not None and item.group not in wanted:
            continue
        items.append(item)
        places.append(row.where)
    check_unique_ids(items, places=places)
    if not items:
        raise SchemaError("no BLEnD multiple-choice items" + (f" for countries {sorted(wanted)}" if wanted else ""))
    # The reference caps (country, question) at its first 5 rows: BLEnD has up to hundreds of rows per pair that
    # differ only in their options.
    return cap_per_question(items, max_per_question)


def load_blend_mcq_file(
    path: str | Path,
    *,
    questions_dir: str | Path | None = None,
    countries: Iterable[str] | None = None,
    max_per_question: int | None = 5,
) -> list[MCItem]:
    """Load BLEnD multiple-choice questions from a local ``.json``/``.jsonl``/``.csv``/``.parquet`` file.

    Args:
        path: the file, with columns ``MCQID, ID, country, prompt, choices, answer_idx``.
        questions_dir: folder of ``<Country>_questions.csv`` for topics (needed for the neur/test split).
        countries: keep only these countries (BLEnD names or readable names).
        max_per_question: keep at most this many items per (country, question ID), in file order; None = all.

    Raises:
        SchemaError: naming the file, row and field of the first bad row.
    """
    return _rows_to_items(
        read_rows(path), questions_dir=questions_dir, countries=countries, max_per_question=max_per_question
    )


def load_blend_mcq_hub(
    hub_id: str = BLEND_HUB_ID,
    *,
    config: str = BLEND_MCQ_CONFIG,
    split: str = BLEND_MCQ_SPLIT,
    questions_dir: str | Path | None = None,
    countries: Iterable[str] | None = None,
    max_per_question: int | None = 5,
) -> list[MCItem]:
    """Load BLEnD multiple-choice questions from the Hugging Face hub via ``datasets.load_dataset`` (needs the
    ``hub`` extra and network access). Same conversion and arguments as ``load_blend_mcq_file``."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError("loading from the Hugging Face hub needs 'datasets': pip install 'culnig_ext[hub]'") from exc
    dataset = datasets.load_dataset(hub_id, config, split=split)
    return _rows_to_items(
        hub_rows(dataset, f"{hub_id} [{config}/{split}]"),
        questions_dir=questions_dir,
        countries=countries,
        max_per_question=max_per_question,
    )

