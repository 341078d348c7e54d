"""The multiple-choice item every loader produces, and its validation.

An ``MCItem`` is one question with its options and gold answer, kept under a group (a country for cultural data,
a subject name for general data). Loaders build items through ``MCItem.from_dict`` or the constructor; both
validate, so a bad item never gets past the data side. Errors are ``SchemaError`` (a ``ValueError``) naming the
place (file and line, row, or item id) and the field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping, Sequence


class SchemaError(ValueError):
    """Bad input data; the message names the file/line or item and the field."""


_REQUIRED = ("id", "group", "question", "choices", "answer_idx")
_OPTIONAL = ("topic", "question_id", "values")


def _problem(
    id: Any, group: Any, question: Any, choices: Any, answer_idx: Any, topic: Any, question_id: Any, values: Any
) -> tuple[str, str] | None:
    """Return ``(field, message)`` for the first invalid field, or None when the item is valid."""
    if not isinstance(id, str) or not id.strip():
        return "id", f"must be a non-empty string, got {id!r}"
    if not isinstance(group, str) or not group.strip():
        return "group", f"must be a non-empty string, got {group!r}"
    if not isinstance(question, str):
        return "question", f"must be a string (may be empty for control items), got {type(question).__name__}"
    if not isinstance(choices, tuple) or len(choices) < 2:
        return "choices", f"must hold at least 2 options, got {choices!r}"
    seen: dict[str, int] = {}
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            return "choices", f"option {i} must be a non-empty string, got {choice!r}"
        # Two options that differ only in case/spacing would make the gold ambiguous.
        key = " ".join(choice.split()).casefold()
        if key in seen:
            return "choices", f"options {seen[key]} and {i} are the same ({choice!r})"
        seen[key] = i
    if isinstance(answer_idx, bool) or not isinstance(answer_idx, int):
        return "answer_idx", f"must be an integer, got {answer_idx!r}"
    if not 0 <= answer_idx < len(choices):
        return "answer_idx", f"{answer_idx} is out of range for {len(choices)} options"
    if topic is not None and (not isinstance(topic, str) or not topic.strip()):
        return "topic", f"must be a non-empty string or null, got {topic!r}"
    if question_id is not None and (not isinstance(question_id, str) or not question_id.strip()):
        return "question_id", f"must be a non-empty string or null, got {question_id!r}"
    if values is not None:
        if not isinstance(values, tuple) or len(values) != len(choices):
            return "values", f"must give one number per option ({len(choices)}), got {values!r}"
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                return "values", f"must be finite numbers, got {v!r}"
    return None


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question.

    Attributes:
        id: unique id within a data set (e.g. ``"blend:US:Al-en-01:0"``).
        group: the group the item counts under: a BLEnD country name (``"South_Korea"``) for cultural data, a
            subject name for general data.
        question: the question text; ``""`` for control items (question removed, options kept).
        choices: the options, at least 2, non-empty and distinct (ignoring case and spacing).
        answer_idx: index of the gold option in ``choices``.
        topic: optional topic (BLEnD: Food, Work life, Sport, Education, Family, Holidays/Celebration/Leisure).
        question_id: optional id of the underlying question shared by several items (BLEnD question ID,
            CountryRC template id); used to cap items per (group, question).
        values: optional numeric value of each option (WorldValuesBench-style scale items).

    Lists given for ``choices``/``values`` are stored as tuples. Construction validates every field.

    Raises:
        SchemaError: naming the item id and the invalid field.
    """

    id: str
    group: str
    question: str
    choices: tuple[str, ...]
    answer_idx: int
    topic: str | None = None
    question_id: str | None = None
    values: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        # Accept lists for convenience; store tuples so the item stays hashable and immutable.
        if isinstance(self.choices, list):
            object.__setattr__(self, "choices", tuple(self.choices))
        if isinstance(self.values, list):
            object.__setattr__(self, "values", tuple(self.values))
        if isinstance(self.values, tuple):
            object.__setattr__(
                self, "values",
                tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in self.values),
            )
        problem = _problem(
            self.id, self.group, self.question, self.choices, self.answer_idx, self.topic, self.question_id,
            self.values,
        )
        if problem is not None:
            field, message = problem
            raise SchemaError(f"item {self.id!r}: field {field!r}: {message}")

    @property
    def answer(self) -> str:
        """The gold option's text."""
        return self.choices[self.answer_idx]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; optional fields that are None are left out."""
        out: dict[str, Any] = {
            "id": self.id,
            "group": self.group,
            "question": self.question,
            "choices": list(self.choices),
            "answer_idx": self.answer_idx,
        }
        if self.topic is not None:
            out["topic"] = self.topic
        if self.question_id is not None:
            out["question_id"] = self.question_id
        if self.values is not None:
            out["values"] = list(self.values)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "item") -> "MCItem":
        """Build an item from a dict as written by ``to_dict``.

        Args:
            data: the dict; unknown keys are refused (they are usually typos).
            where: the place to name in errors, e.g. ``"items.jsonl, line 3"``.

        Raises:
            SchemaError: ``"<where>: field '<name>': <problem>"``.
        """
        if not isinstance(data, Mapping):
            raise SchemaError(f"{where}: expected a JSON object, got {type(data).__name__}")
        for key in _REQUIRED:
            if key not in data:
                raise SchemaError(f"{where}: field {key!r}: missing")
        unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise SchemaError(f"{where}: field {unknown[0]!r}: unknown field (known: {', '.join(_REQUIRED + _OPTIONAL)})")
        choices = data["choices"]
        values = data.get("values")
        kwargs = {
            "id": data["id"],
            "group": data["group"],
            "question": data["question"],
            "choices": tuple(choices) if isinstance(choices, list) else choices,
            "answer_idx": data["answer_idx"],
            "topic": data.get("topic"),
            "question_id": data.get("question_id"),
            "values": tuple(values) if isinstance(values, list) else values,
        }
        problem = _problem(**kwargs)
        if problem is not None:
            field, message = problem
            raise SchemaError(f"{where}: field {field!r}: {message}")
        return cls(**kwargs)


FIELD_NAMES = tuple(f.name for f in fields(MCItem))


def check_unique_ids(items: Sequence[MCItem], *, places: Sequence[str] | None = None) -> None:
    """Raise if two items share an id.

    Args:
        items: the items.
        places: optional place of each item (e.g. ``"f.jsonl, line 3"``) used in the message instead of positions.

    Raises:
        SchemaError: naming the duplicate id and both places.
    """
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.id in seen:
            first = seen[item.id]
            here = places[i] if places is not None else f"item at position {i}"
            there = places[first] if places is not None else f"position {first}"
            raise SchemaError(f"{here}: field 'id': duplicate id {item.id!r} (first at {there})")
        seen[item.id] = i


def validate_items(items: Iterable[MCItem]) -> list[MCItem]:
    """Check that every element is an ``MCItem`` and ids are unique; return them as a list.

    Raises:
        SchemaError: naming the offending position or id.
    """
    out = list(items)
    for i, item in enumerate(out):
        if not isinstance(item, MCItem):
            raise SchemaError(f"item at position {i}: expected an MCItem, got {type(item).__name__}")
    check_unique_ids(out)
    return out
