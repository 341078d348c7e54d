"""BLEnD's questions grouped by language: the language study's items (``recipes/language.yaml``).

BLEnD's annotations hold every question in the local language of its country (``question``) and in English
(``en_question``). The 16 countries/regions speak 13 languages; a group is a language, so the countries that share
one are pooled (``LANGUAGES``): English (US, UK), Korean (South_Korea, North_Korea), Spanish (Spain, Mexico); the
others have a language of their own. The options and gold answer are those of BLEnD's multiple-choice items built
from the annotations (``blend_annotations``: English answer texts, other countries' answers as distractors); only
the question changes:

* ``load_language_items(root)``: the question in the local language, grouped by that language;
* ``load_language_items(root, english=True)``: the same items with the question in English, still grouped by the
  language of their country (so that each language's items can be compared with their own translations); the
  English-speaking countries' items are left out, since for them the two are the same text.

A question whose local-language text is empty in the annotations is left out of both.

Ids: ``language:<Language>:<Country>:<question ID>:<k>`` (English: ``...:en``); question ids ``<Country>:<ID>``
(the per-question cap counts a question per country). Topics are BLEnD's, so the scoring/held-out split by topic
applies. Sources: ``language:PATH`` and ``language-en:PATH`` (``PATH`` a BLEnD folder, or ``auto``:
``data.defaults.find_blend_root``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable

from culnig_ext._utils.textfile import utf8_errors
from culnig_ext.data.blend_annotations import build_blend_items
from culnig_ext.data.schema import MCItem, SchemaError

#: The language of each BLEnD country's local questions.
LANGUAGES: dict[str, str] = {
    "US": "English", "UK": "English", "South_Korea": "Korean", "North_Korea": "Korean", "Algeria": "Arabic",
    "Indonesia": "Indonesian", "Spain": "Spanish", "Mexico": "Spanish", "Iran": "Persian", "Assam": "Assamese",
    "Greece": "Greek", "Ethiopia": "Amharic", "Northern_Nigeria": "Hausa", "West_Java": "Sundanese",
    "China": "Chinese", "Azerbaijan": "Azerbaijani",
}
ENGLISH = "English"


def local_questions(root: Path, country: str) -> dict[str, str]:
    """Question ID -> the question in ``country``'s local language (``annotations/<Country>_data.json``)."""
    path = root / "annotations" / f"{country}_data.json"
    try:
        with utf8_errors(path, SchemaError), open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    out = {}
    for qid, entry in raw.items():
        if not isinstance(entry, dict):
            raise SchemaError(f"{path}: question {qid!r}: expected an object, got {type(entry).__name__}")
        question = entry.get("question")
        if isinstance(question, str) and question.strip():  # a few are empty (China: New-en-04): left out
            out[qid] = question.strip()
    return out


def load_language_items(root: str | Path, *, english: bool = False, seed: int = 0,
                        max_per_question: int | None = 5, languages: Iterable[str] | None = None) -> list[MCItem]:
    """The language study's items (module docstring), countries in BLEnD's order; ``languages``: keep these
    groups only (refusing a language the data lacks)."""
    root = Path(root)
    build = build_blend_items(root, seed=seed, max_per_question=max_per_question)
    local: dict[str, dict[str, str]] = {}
    items = []
    for it in build.items:
        country = it.group
        language = LANGUAGES.get(country)
        if language is None:
            raise SchemaError(f"{root}: country {country!r} has no language in culnig_ext.data.languages.LANGUAGES")
        if english and language == ENGLISH:
            continue
        if country not in local:
            local[country] = local_questions(root, country)
        qid = it.question_id or it.id
        if qid not in local[country]:
            continue  # no local-language text: left out in both languages, so the two sets hold the same questions
        question = it.question if english else local[country][qid]
        k = it.id.rsplit(":", 1)[-1]
        items.append(dataclasses.replace(
            it, id=f"language:{language}:{country}:{qid}:{k}{':en' if english else ''}", group=language,
            question=question, question_id=f"{country}:{qid}"))
    if languages is not None:
        wanted = list(languages)
        present = set(it.group for it in items)
        missing = [g for g in wanted if g not in present]
        if missing:
            raise ValueError(f"{root}: no items in language(s) {missing}; it has {sorted(present)}")
        items = [it for it in items if it.group in wanted]
    return items
