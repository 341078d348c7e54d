"""BLEnD short-answer questions (SAQ) in English and in each country's local language, and their scoring.

Source: a BLEnD folder with ``annotations/<Country>_data.json`` (per question ID: the local-language ``question``,
the ``en_question``, and the annotators' ``answers`` / ``en_answers`` with a ``count``), ``questions/<Country>_
questions.csv`` (ID -> Topic) and ``prompts/<Country>_prompts.csv`` (``id, English, Translation``: templates with
``{q}``). One ``SAQItem`` per (country, question, language): English (``en_question``, the English template, the
annotators' English answers) and, for countries whose language is not English, the local language (``question``,
the translated template, the local answers). Answers are those of annotations with ``count > 0`` (as the paper's
eval/evaluate_blend_saq.py). The paper draws the template with ``random.choice`` under one global seed; we draw it
per (seed, country, question), the same template for both languages, so items do not depend on loading order.

Scoring (``score_answer``): the response is cut to what follows an ``answer`` key when it has one (the templates ask
for ``{'question': ..., 'answer': [...]}``); response and each gold answer are normalised (Unicode NFKC, case-folded,
punctuation and symbols turned into spaces) and lemmatised token by token with simplemma (pinned, 2.0.0) for the
languages it covers (en, es, el, fa, id, ar); a gold answer matches when its token sequence occurs contiguously in
the response's. Languages simplemma does not cover (ko, zh, am, ha, su, az, as) are only normalised; Chinese, written
without spaces, matches by substring after removing spaces. An item is correct when any gold answer matches.
"""
from __future__ import annotations

import csv
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from culnig_ext._utils.textfile import utf8_errors
from culnig_ext.data.countries import BLEND_COUNTRIES, resolve_countries
from culnig_ext.data.schema import SchemaError
from culnig_ext.data.seeding import stable_rng
from culnig_ext.data.splits import NEUR_TOPICS, TEST_TOPICS

#: Each BLEnD country's local language (ISO 639-1).
COUNTRY_LANGUAGE: dict[str, str] = {
    "US": "en", "UK": "en", "South_Korea": "ko", "Algeria": "ar", "Indonesia": "id", "Spain": "es", "Iran": "fa",
    "Mexico": "es", "Assam": "as", "Greece": "el", "Ethiopia": "am", "Northern_Nigeria": "ha", "North_Korea": "ko",
    "West_Java": "su", "China": "zh", "Azerbaijan": "az",
}
#: Languages written without spaces between words: matched by substring.
NO_SPACES = frozenset({"zh", "ja", "th"})


@dataclass(frozen=True)
class SAQItem:
    """One short-answer question: ``prompt`` is the user turn (template filled), ``answers`` the gold answers."""

    id: str
    group: str
    language: str
    prompt: str
    answers: tuple[str, ...]
    question_id: str
    topic: str
    template_id: str


_TRANSLATED_Q = re.compile(r"\{\w{1,2}\}")


def _placeholder(template: str) -> str | None:
    """The question's placeholder in a prompt template: ``{q}``, or else its one translated form (BLEnD's
    ``Algeria_prompts.csv`` rows 7-8 have ``{س}`` / ``{ف}`` in their Arabic translation); None when there is none
    or more than one candidate."""
    if "{q}" in template:
        return "{q}"
    found = set(_TRANSLATED_Q.findall(template))
    return found.pop() if len(found) == 1 else None


def _fill(template: str, question: str) -> str:
    return template.replace(_placeholder(template), question)


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"BLEnD file not found: {path}")
    with utf8_errors(path, SchemaError), open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def load_saq(root: str | Path, *, countries: Iterable[str] | None = None, split: str = "test",
             languages: Sequence[str] = ("en", "local"), seed: int = 0, max_per_country: int | None = None
             ) -> list[SAQItem]:
    """Short-answer items of a BLEnD folder (see the module docstring).

    Args:
        countries: BLEnD countries (default: all 16).
        split: ``test`` (Education, Family, Holidays: the paper's), ``neur`` or ``all`` topics.
        languages: ``"en"`` and/or ``"local"``.
        max_per_country: keep the first N questions per country (file order), to bound generation.
    """
    root = Path(root)
    if split not in ("neur", "test", "all"):
        raise ValueError(f"unknown split {split!r}; accepted: neur, test, all")
    bad = set(languages) - {"en", "local"}
    if bad or not languages:
        raise ValueError(f"languages must be 'en' and/or 'local', got {list(languages)}")
    topics = {"neur": NEUR_TOPICS, "test": TEST_TOPICS, "all": NEUR_TOPICS + TEST_TOPICS}[split]
    groups = list(BLEND_COUNTRIES) if countries is None else resolve_countries(countries, known=BLEND_COUNTRIES)
    items: list[SAQItem] = []
    for country in groups:
        ann_path = root / "annotations" / f"{country}_data.json"
        if not ann_path.is_file():
            raise FileNotFoundError(f"BLEnD file not found: {ann_path}")
        with utf8_errors(ann_path, SchemaError), open(ann_path, encoding="utf-8") as f:
            try:
                annotations = json.load(f)
            except json.JSONDecodeError as exc:
                raise SchemaError(f"{ann_path}, line {exc.lineno}: invalid JSON ({exc.msg})") from exc
        topic_of = {r["ID"]: r["Topic"] for r in _read_csv(root / "questions" / f"{country}_questions.csv")}
        templates = _read_csv(root / "prompts" / f"{country}_prompts.csv")
        for i, t in enumerate(templates):
            for col in ("id", "English", "Translation"):
                if not (t.get(col) or "").strip() or (col != "id" and _placeholder(t[col]) is None):
                    raise SchemaError(f"{root / 'prompts' / f'{country}_prompts.csv'}, row {i + 2}: field {col!r}: "
                                      "missing or without {q}")
        lang = COUNTRY_LANGUAGE.get(country, "en")
        kept = 0
        for qid, rec in annotations.items():
            if topic_of.get(qid) not in topics:
                continue
            where = f"{ann_path}, question {qid!r}"
            anns = rec.get("annotations")
            if not isinstance(anns, list):
                raise SchemaError(f"{where}: field 'annotations': expected a list")
            local = sorted({a for x in anns if x.get("count", 0) > 0 for a in x.get("answers", []) if a.strip()})
            english = sorted({a for x in anns if x.get("count", 0) > 0 for a in x.get("en_answers", []) if a.strip()})
            template = stable_rng("saq", seed, country, qid).choice(templates)
            added = False
            if "en" in languages and english and rec.get("en_question"):
                items.append(SAQItem(f"saq:{country}:{qid}:en", country, "en",
                                     _fill(template["English"], rec["en_question"]), tuple(english), qid,
                                     topic_of[qid], template["id"]))
                added = True
            if "local" in languages and lang != "en" and local and rec.get("question"):
                items.append(SAQItem(f"saq:{country}:{qid}:{lang}", country, lang,
                                     _fill(template["Translation"], rec["question"]), tuple(local), qid,
                                     topic_of[qid], template["id"]))
                added = True
            kept += added
            if max_per_country is not None and kept >= max_per_country:
                break
    if not items:
        raise SchemaError(f"{root}: no short-answer items for {groups} (split {split}, languages {list(languages)})")
    return items


_ANSWER_KEY = re.compile(r"""["']answer["']\s*:""", re.IGNORECASE)


def answer_part(response: str) -> str:
    """What follows the last ``'answer':`` key of a response, or the whole response when it has none."""
    keys = list(_ANSWER_KEY.finditer(response))
    return response[keys[-1].end():] if keys else response


def normalise(text: str) -> str:
    """NFKC, case-folded, punctuation and symbols replaced by spaces, spaces collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if unicodedata.category(c)[0] in "PS" else c for c in text)
    return " ".join(text.split())


def _lemmatiser(language: str):
    import simplemma
    from simplemma.strategies.dictionaries.dictionary_factory import SUPPORTED_LANGUAGES

    if language not in SUPPORTED_LANGUAGES:
        return None
    return lambda token: simplemma.lemmatize(token, lang=language).casefold()


def tokens(text: str, language: str) -> list[str]:
    """Normalised, lemmatised (where simplemma covers ``language``) tokens."""
    lemma = _lemmatiser(language)
    words = normalise(text).split()
    return [lemma(w) for w in words] if lemma else words


def score_answer(response: str, answers: Sequence[str], language: str) -> bool:
    """True when any gold answer occurs in the response's answer part (see the module docstring)."""
    part = answer_part(response)
    if language in NO_SPACES:
        hay = normalise(part).replace(" ", "")
        return any(normalise(a).replace(" ", "") and normalise(a).replace(" ", "") in hay for a in answers)
    hay = tokens(part, language)
    for a in answers:
        needle = tokens(a, language)
        if needle and any(hay[i:i + len(needle)] == needle for i in range(len(hay) - len(needle) + 1)):
            return True
    return False
