"""The scorer's input: one encoded item (token ids plus the answer to attribute), and its validation.

This is the hand-over point between the data side (``culnig_ext.data``: schema, loaders, prompt rendering) and the
model side (``culnig_ext.scoring.scorer``). Nothing here knows about tokenizers or models beyond a vocabulary size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence


@dataclass(frozen=True)
class ScoreItem:
    """One prompt whose continuation should be the gold answer.

    Attributes:
        id: unique item id, used in error messages and fingerprints.
        input_ids: the prompt's token ids (no padding), length >= 1.
        group: the group the item's score is kept under (a country for cultural data).
        target_ids: the answer's token ids, length >= 1. With one token this is the paper's single answer token
            ``y``; with several, the model is fed ``input_ids + target_ids[:-1]`` and ``P(y|x)`` is the product of
            the target tokens' probabilities under teacher forcing.
    """

    id: str
    input_ids: tuple[int, ...]
    group: str
    target_ids: tuple[int, ...] = field(default=())

    @property
    def fed_ids(self) -> tuple[int, ...]:
        """Token ids the model is fed: the prompt followed by all target tokens but the last."""
        return self.input_ids + self.target_ids[:-1]


class ItemError(ValueError):
    """An item cannot be scored; the message names the item and the field."""


_REQUIRED = ("id", "input_ids", "group")


def as_score_item(raw: ScoreItem | Mapping[str, Any], *, position: int, vocab_size: int | None = None,
                  where: str | None = None) -> ScoreItem:
    """Validate one item given as a ``ScoreItem`` or a dict ``{"id", "input_ids", "answer_id" | "target_ids",
    "group"}`` and return it as a ``ScoreItem``.

    ``where`` (e.g. ``"items.jsonl, line 4"``) replaces the position in messages.

    Raises:
        ItemError: naming the item (its id, and its position or place) and the offending field.
    """
    place = where or f"position {position}"
    if isinstance(raw, ScoreItem):
        item = raw
        name = f"item {item.id!r} ({place})"
    else:
        if not isinstance(raw, Mapping):
            raise ItemError(f"item at {place}: expected a dict or ScoreItem, got {type(raw).__name__}")
        name = f"item {raw.get('id', '<no id>')!r} ({place})"
        missing = [k for k in _REQUIRED if k not in raw]
        if missing:
            raise ItemError(f"{name}: missing key(s) {missing}")
        has_answer, has_targets = raw.get("answer_id") is not None, raw.get("target_ids") is not None
        if has_answer == has_targets:
            raise ItemError(f"{name}: give exactly one of 'answer_id' or 'target_ids'")
        targets = [raw["answer_id"]] if has_answer else list(raw["target_ids"])
        try:
            item = ScoreItem(
                id=str(raw["id"]),
                input_ids=tuple(int(t) for t in raw["input_ids"]),
                group=str(raw["group"]),
                target_ids=tuple(int(t) for t in targets),
            )
        except (TypeError, ValueError) as exc:
            raise ItemError(f"{name}: token ids must be integers ({exc})") from exc
    if len(item.input_ids) == 0:
        raise ItemError(f"{name}: 'input_ids' is empty")
    if len(item.target_ids) == 0:
        raise ItemError(f"{name}: no answer token ('answer_id'/'target_ids' is empty)")
    if vocab_size is not None:
        for key, ids in (("input_ids", item.input_ids), ("answer_id/target_ids", item.target_ids)):
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise ItemError(f"{name}: {key} has token id {bad[0]} outside the vocabulary [0, {vocab_size})")
    return item


def as_score_items(items: Iterable[ScoreItem | Mapping[str, Any]], *, vocab_size: int | None = None) -> list[ScoreItem]:
    """Validate every item (see ``as_score_item``); ids must be unique."""
    out: list[ScoreItem] = []
    seen: dict[str, int] = {}
    for position, raw in enumerate(items):
        item = as_score_item(raw, position=position, vocab_size=vocab_size)
        if item.id in seen:
            raise ItemError(f"item {item.id!r} (position {position}): duplicate id (first at position {seen[item.id]})")
        seen[item.id] = position
        out.append(item)
    if not out:
        raise ItemError("no items to score")
    return out


def group_names(items: Sequence[ScoreItem]) -> list[str]:
    """Group names in order of first appearance."""
    return list(dict.fromkeys(item.group for item in items))
