"""The paper's BLEnD split by topic, the per-question cap, and control-set derivation."""
from __future__ import annotations

import dataclasses
from typing import Iterable, Literal

import torch

from culnig_ext.data.schema import MCItem, SchemaError, validate_items

#: BLEnD's six topics, in the order the reference halves them.
BLEND_TOPICS: tuple[str, ...] = ("Food", "Work life", "Sport", "Education", "Family", "Holidays/Celebration/Leisure")
#: BLEnD_neur: topics used for neuron scoring.
NEUR_TOPICS: tuple[str, ...] = BLEND_TOPICS[:3]
#: BLEnD_test: topics held out for evaluation.
TEST_TOPICS: tuple[str, ...] = BLEND_TOPICS[3:]

Split = Literal["neur", "test", "all"]
CONTROL_SUFFIX = "::ctrl"


def cap_per_question(items: Iterable[MCItem], max_per_question: int | None) -> list[MCItem]:
    """Keep at most ``max_per_question`` items per (group, question_id), in order. Items without a question_id are
    all kept; ``None`` keeps everything."""
    items = list(items)
    if max_per_question is None:
        return items
    if max_per_question < 1:
        raise ValueError(f"max_per_question must be >= 1 or None, got {max_per_question}")
    counts: dict[tuple[str, str], int] = {}
    out: list[MCItem] = []
    for item in items:
        if item.question_id is not None:
            key = (item.group, item.question_id)
            counts[key] = counts.get(key, 0) + 1
            if counts[key] > max_per_question:
                continue
        out.append(item)
    return out


def split_items(items: Iterable[MCItem], split: Split, *, max_per_question: int | None = 5) -> list[MCItem]:
    """The paper's split of BLEnD-style items by topic, with at most ``max_per_question`` items per
    (country, question).

    Args:
        items: the items.
        split: ``"neur"`` (Food, Work life, Sport), ``"test"`` (Education, Family, Holidays/Celebration/Leisure) or
            ``"all"``.
        max_per_question: cap per (group, question_id); None = no cap.

    Raises:
        ValueError: for an unknown split.
        SchemaError: for "neur"/"test" when an item has no topic or a topic outside BLEnD's six (naming the item).
    """
    items = validate_items(items)
    if split not in ("neur", "test", "all"):
        raise ValueError(f"unknown split {split!r}; accepted: 'neur', 'test', 'all'")
    if split != "all":
        for item in items:
            if item.topic is None:
                raise SchemaError(f"item {item.id!r}: field 'topic': missing, so the {split!r} split cannot place it")
            if item.topic not in BLEND_TOPICS:
                raise SchemaError(
                    f"item {item.id!r}: field 'topic': {item.topic!r} is not a BLEnD topic ({', '.join(BLEND_TOPICS)})"
                )
        keep = NEUR_TOPICS if split == "neur" else TEST_TOPICS
        items = [item for item in items if item.topic in keep]
    return cap_per_question(items, max_per_question)


def make_control(items: Iterable[MCItem]) -> list[MCItem]:
    """The control set of any item set (BLEnD_ctrl for BLEnD): same options and answer, question removed
    (``question=""``), ids suffixed ``"::ctrl"``."""
    return [
        dataclasses.replace(item, id=item.id + CONTROL_SUFFIX, question="")
        for item in validate_items(items)
    ]


def sample_items(items: list[MCItem], cap: int | None, seed: int) -> list[MCItem]:
    """A seeded sample of at most ``cap`` items, in their original order (``cap=None``: all of them)."""
    if cap is None or len(items) <= cap:
        return items
    g = torch.Generator().manual_seed(seed)
    keep = sorted(torch.randperm(len(items), generator=g)[:cap].tolist())
    return [items[i] for i in keep]
