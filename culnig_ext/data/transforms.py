"""Named transforms of item sets: controls and surface sets derived from a study's scoring items.

Each keeps an item's group, options, answer, topic and question id, changes only the question, and suffixes the
id with ``::<name>`` so that a derived item never shares an id with its source:

* ``empty``: the question removed (``""``; renders like ``control="empty"``, BLEnD_ctrl);
* ``neutral``: the question replaced by ``NEUTRAL_FRAME``, a frame written in no language and no script (only
  punctuation), so that a contrast against it keeps the answer format and removes the question's language;
* ``shuffle``: the question's own tokens in a seeded random order (words split on white space; a question written
  without spaces, e.g. Chinese, is split into characters): the same script and the same tokens, no sentence. A
  neuron that fires on a script (or on its tokens) alone fires here too, so a surface set of shuffled items removes
  it.

``transform_items(items, name, seed)`` applies one; ``control_from_file`` lines a file's control items up with the
scoring items (one per scoring item id).
"""
from __future__ import annotations

import dataclasses
import random
from typing import Callable, Sequence

from culnig_ext.data.schema import MCItem, SchemaError

NEUTRAL_FRAME = "? … ?"


def _empty(item: MCItem, rng: random.Random) -> str:
    return ""


def _neutral(item: MCItem, rng: random.Random) -> str:
    return NEUTRAL_FRAME


def shuffle_question(question: str, rng: random.Random) -> str:
    """``question``'s tokens in a random order of ``rng``: its words, or its characters when it has no space
    (Chinese, or a single word)."""
    words = question.split()
    if len(words) > 1:
        rng.shuffle(words)
        return " ".join(words)
    chars = [c for c in question if not c.isspace()]
    rng.shuffle(chars)
    return "".join(chars)


def _shuffle(item: MCItem, rng: random.Random) -> str:
    return shuffle_question(item.question, rng)


TRANSFORMS: dict[str, Callable[[MCItem, random.Random], str]] = {
    "empty": _empty, "neutral": _neutral, "shuffle": _shuffle,
}


def transform_items(items: Sequence[MCItem], name: str, seed: int = 0) -> list[MCItem]:
    """``items`` with their questions transformed by ``name`` (module docstring), in the same order; the
    shuffle of an item depends only on (seed, item id)."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; known: {', '.join(TRANSFORMS)}")
    fn = TRANSFORMS[name]
    return [dataclasses.replace(it, id=f"{it.id}::{name}", question=fn(it, random.Random(f"{seed}:{it.id}")))
            for it in items]


def control_from_file(items: Sequence[MCItem], control: Sequence[MCItem], where: str) -> list[MCItem]:
    """The control items of ``control`` (read from ``where``) in the order of ``items``: the control of item ``X``
    has id ``X`` or ``X::ctrl``; a scoring item without one is refused naming it."""
    by_id: dict[str, MCItem] = {}
    for c in control:
        by_id[c.id[:-len("::ctrl")] if c.id.endswith("::ctrl") else c.id] = c
    missing = [it.id for it in items if it.id not in by_id]
    if missing:
        raise SchemaError(f"{where}: no control item for scoring item(s) {missing[:5]} (a control item has the "
                          f"scoring item's id, or that id + '::ctrl')")
    return [dataclasses.replace(by_id[it.id], id=f"{it.id}::ctrl", group=it.group) for it in items]
