"""Multiple-choice items built from BLEnD's raw annotations, the way BLEnD builds its multiple-choice set.

Input: a folder with ``annotations/<Country>_data.json`` (per question ID: ``en_question`` and ``annotations``, a
list of ``{answers, en_answers, count}`` groups) and ``questions/<Country>_questions.csv`` (``ID, Topic, ...``).

For a target country and question ID:

* the country's *top answer* is the first group (in file order) with the highest ``count`` among groups with at
  least one English answer; its first English answer is the answer text. BLEnD's files list groups by count,
  highest first, so ties go to the group listed first. A top answer needs ``count >= min_count`` (BLEnD only uses
  answers given by at least 2 annotators).
* gold = the target country's top answer;
* distractor candidates = the other countries' top answers for the same question ID that the target country's
  annotators did not give (compared case-insensitively against every English answer of every group of the target
  country), without repeats (case-insensitive), in ``distractor_countries`` order;
* with fewer than ``n_options - 1`` candidates the (country, question) is skipped and recorded in
  ``BlendBuild.skipped``; otherwise up to ``max_per_question`` items are made, each from a different seeded draw of
  ``n_options - 1`` candidates, with the option order shuffled by the same seeded generator.

The question text is the target country's ``en_question``; the topic comes from its questions CSV. Items are named
``blend:<Country>:<ID>:<k>``. Draws depend only on (seed, country, question ID), not on which countries are loaded.
"""
from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from culnig_ext._utils.textfile import utf8_errors
from culnig_ext.data.countries import BLEND_COUNTRIES, resolve_countries
from culnig_ext.data.schema import MCItem, SchemaError
from culnig_ext.data.seeding import stable_rng
from culnig_ext.data.tabular import read_rows, require_columns

log = logging.getLogger(__name__)

SKIP_NO_GOLD = "no_gold"
SKIP_FEW_DISTRACTORS = "too_few_distractors"


@dataclass(frozen=True)
class Skip:
    """A (country, question) for which no item could be built."""

    country: str
    question_id: str
    reason: str  # SKIP_NO_GOLD or SKIP_FEW_DISTRACTORS
    detail: str


@dataclass
class BlendBuild:
    """The built items and every (country, question) that was skipped, with the reason."""

    items: list[MCItem]
    skipped: list[Skip] = field(default_factory=list)

    def skip_counts(self) -> dict[str, int]:
        """Number of skipped (country, question) pairs per reason."""
        return dict(Counter(s.reason for s in self.skipped))


@dataclass(frozen=True)
class _Question:
    en_question: str
    groups: tuple[tuple[tuple[str, ...], int], ...]  # (English answers, count) per annotation group, file order


def _load_country(path: Path) -> dict[str, _Question]:
    try:
        with utf8_errors(path, SchemaError), open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(raw, dict):
        raise SchemaError(f"{path}: expected a JSON object keyed by question ID, got {type(raw).__name__}")
    out: dict[str, _Question] = {}
    for qid, entry in raw.items():
        where = f"{path}, question {qid!r}"
        if not isinstance(entry, dict):
            raise SchemaError(f"{where}: expected an object, got {type(entry).__name__}")
        en_question = entry.get("en_question")
        if not isinstance(en_question, str) or not en_question.strip():
            raise SchemaError(f"{where}: field 'en_question': missing or empty")
        annotations = entry.get("annotations")
        if not isinstance(annotations, list):
            raise SchemaError(f"{where}: field 'annotations': expected a list, got {annotations!r}")
        groups = []
        for j, group in enumerate(annotations):
            if not isinstance(group, dict):
                raise SchemaError(f"{where}: field 'annotations[{j}]': expected an object")
            en_answers, count = group.get("en_answers"), group.get("count")
            if not isinstance(en_answers, list) or not all(isinstance(a, str) for a in en_answers):
                raise SchemaError(f"{where}: field 'annotations[{j}].en_answers': expected a list of strings")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise SchemaError(f"{where}: field 'annotations[{j}].count': expected a non-negative integer")
            answers = tuple(a.strip() for a in en_answers if a.strip())
            groups.append((answers, count))
        out[str(qid)] = _Question(en_question.strip(), tuple(groups))
    return out


def top_answer(question: _Question, min_count: int) -> str | None:
    """The first English answer of the highest-count group (first listed on ties), or None if no group has an
    English answer or the top count is below ``min_count``."""
    best: tuple[tuple[str, ...], int] | None = None
    for answers, count in question.groups:
        if answers and (best is None or count > best[1]):
            best = (answers, count)
    if best is None or best[1] < min_count:
        return None
    return best[0][0]


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


def discover_countries(root: str | Path) -> list[str]:
    """Countries with an ``annotations/<Country>_data.json`` file under ``root``, in BLEnD's order (others after,
    sorted)."""
    folder = Path(root) / "annotations"
    found = {p.name[: -len("_data.json")] for p in folder.glob("*_data.json")}
    if not found:
        raise FileNotFoundError(f"no <Country>_data.json files in {folder}")
    return [c for c in BLEND_COUNTRIES if c in found] + sorted(found - set(BLEND_COUNTRIES))


def _topics_of(root: Path, country: str) -> dict[str, str]:
    path = root / "questions" / f"{country}_questions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"missing BLEnD question list {path} (needed for topics)")
    topics: dict[str, str] = {}
    for row in read_rows(path):
        require_columns(row, ("ID", "Topic"))
        topics[str(row.data["ID"]).strip()] = str(row.data["Topic"]).strip()
    return topics


def build_blend_items(
    root: str | Path,
    *,
    countries: Iterable[str] | None = None,
    distractor_countries: Iterable[str] | None = None,
    max_per_question: int | None = 5,
    n_options: int = 4,
    min_count: int = 2,
    seed: int = 0,
) -> BlendBuild:
    """Build BLEnD-style multiple-choice items from the raw annotations (see the module docstring for the rules).

    Args:
        root: folder holding ``annotations/`` and ``questions/``.
        countries: target countries (the items' groups); default every country found under ``root``.
        distractor_countries: countries whose top answers serve as distractors; default every country found.
        max_per_question: at most this many items (distinct distractor draws) per (country, question); None = one
            item per distinct draw (C(candidates, n_options - 1), which can be hundreds).
        n_options: options per item (gold + ``n_options - 1`` distractors).
        min_count: the least annotator count a top answer needs to be used as gold or distractor.
        seed: seed of the draws.

    Returns:
        ``BlendBuild`` with the items (target countries in the given order, questions in file order) and the
        skipped (country, question) pairs.

    Raises:
        FileNotFoundError: if an annotation or question file is missing.
        SchemaError: for malformed files or a question without a topic, naming the file and question.
    """
    root = Path(root)
    if n_options < 2:
        raise ValueError(f"n_options must be >= 2, got {n_options}")
    if max_per_question is not None and max_per_question < 1:
        raise ValueError(f"max_per_question must be >= 1, got {max_per_question}")
    available = discover_countries(root)
    targets = available if countries is None else resolve_countries(countries, known=available)
    pool = available if distractor_countries is None else resolve_countries(
        distractor_countries, known=available, what="distractor_countries"
    )
    data = {c: _load_country(root / "annotations" / f"{c}_data.json") for c in dict.fromkeys([*targets, *pool])}
    top = {c: {qid: top_answer(q, min_count) for qid, q in data[c].items()} for c in pool}

    items: list[MCItem] = []
    skipped: list[Skip] = []
    for country in targets:
        topics = _topics_of(root, country)
        for qid, question in data[country].items():
            if qid not in topics:
                raise SchemaError(
                    f"{root / 'annotations' / f'{country}_data.json'}, question {qid!r}: field 'Topic': not listed in "
                    f"{root / 'questions' / f'{country}_questions.csv'}"
                )
            gold = top_answer(question, min_count)
            if gold is None:
                skipped.append(Skip(country, qid, SKIP_NO_GOLD, f"no English answer with count >= {min_count}"))
                continue
            given = {_key(a) for answers, _ in question.groups for a in answers}
            candidates: list[str] = []
            seen: set[str] = set()
            for other in pool:
                answer = top[other].get(qid) if other != country else None
                if answer is None or _key(answer) in given or _key(answer) in seen:
                    continue
                seen.add(_key(answer))
                candidates.append(answer)
            if len(candidates) < n_options - 1:
                skipped.append(Skip(
                    country, qid, SKIP_FEW_DISTRACTORS,
                    f"{len(candidates)} distractor(s) {candidates}, need {n_options - 1}",
                ))
                continue
            rng = stable_rng("blend-annotations", seed, country, qid)
            draws = list(itertools.combinations(range(len(candidates)), n_options - 1))
            n_items = len(draws) if max_per_question is None else min(max_per_question, len(draws))
            for k, draw in enumerate(rng.sample(draws, n_items)):
                options = [gold, *(candidates[i] for i in draw)]
                order = list(range(n_options))
                rng.shuffle(order)
                items.append(MCItem(
                    id=f"blend:{country}:{qid}:{k}",
                    group=country,
                    question=question.en_question,
                    choices=tuple(options[i] for i in order),
                    answer_idx=order.index(0),
                    topic=topics[qid],
                    question_id=qid,
                ))
    if skipped:
        counts = Counter(s.reason for s in skipped)
        log.warning(
            "BLEnD annotations %s: built %d items; skipped %d (country, question) pairs: %s",
            root, len(items), len(skipped), ", ".join(f"{n} {r}" for r, n in sorted(counts.items())),
        )
    return BlendBuild(items, skipped)


def load_blend_annotations(root: str | Path, **kwargs: Any) -> list[MCItem]:
    """``build_blend_items(root, **kwargs).items`` (skips are logged as a warning)."""
    return build_blend_items(root, **kwargs).items


def is_blend_annotation_root(path: str | Path) -> bool:
    """True if ``path`` is a folder with ``annotations/`` and ``questions/`` subfolders."""
    p = Path(path)
    return (p / "annotations").is_dir() and (p / "questions").is_dir()


__all__: Sequence[str] = (
    "BlendBuild", "Skip", "SKIP_NO_GOLD", "SKIP_FEW_DISTRACTORS", "build_blend_items", "load_blend_annotations",
    "discover_countries", "is_blend_annotation_root", "top_answer",
)
