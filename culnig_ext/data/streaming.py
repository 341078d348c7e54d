"""Lazy item sources for the scorer: items are read, tokenised, validated and batched a window at a time, never
held as a whole dataset.

- ``ItemStream`` validates items one by one (generator, list, ``datasets.IterableDataset``, a lazily read JSONL
  file), applies ``--max-items``/``--shard``, and keeps an incremental, order-independent fingerprint plus one 64-bit
  hash per item id (8 bytes an item: what lets ``culnig merge`` refuse overlapping tables).
- ``windowed_batches`` length-sorts within a window of a few dozen batches (stable, so the order is deterministic:
  what makes a resumed run bit-identical), and ``background`` runs the whole read -> tokenise -> window pipeline in a
  thread with a bounded queue, so the model never waits for the tokenizer.
- ``read_score_jsonl`` / ``read_item_jsonl``: JSON Lines read a line at a time (encoded ``ScoreItem`` dicts, or the
  canonical ``MCItem`` file of ``culnig_ext.data``).
"""
from __future__ import annotations

import hashlib
import os
import queue
import threading
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from culnig_ext.data.items import ItemError, ScoreItem, as_score_item

_MASK64 = (1 << 64) - 1


def item_hash(item_id: str) -> int:
    """A signed 64-bit hash of an item id (stored per table to detect overlapping tables in a merge)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little", signed=True)


def _content_hash(item: ScoreItem) -> int:
    data = repr((item.id, item.group, item.input_ids, item.target_ids)).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def combine_fingerprints(fingerprints: Iterable[str]) -> str:
    """The fingerprint of the union of disjoint item sets: fingerprints are sums of per-item hashes mod 2^64, so
    the merge of shards has the fingerprint of the unsharded data."""
    total = 0
    for fp in fingerprints:
        total = (total + int(fp, 16)) & _MASK64
    return f"{total:016x}"


class Fingerprint:
    """Incremental, order-independent hash of items (ids, groups, token ids): the sum of per-item hashes mod 2^64."""

    def __init__(self) -> None:
        self.total = 0
        self.count = 0

    def add(self, item: ScoreItem) -> None:
        self.total = (self.total + _content_hash(item)) & _MASK64
        self.count += 1

    def hexdigest(self) -> str:
        return f"{self.total:016x}"


def dataset_fingerprint(items: Iterable[ScoreItem]) -> str:
    """A short hash of the items' ids, groups and token ids (order-independent; additive over disjoint sets)."""
    fp = Fingerprint()
    for item in items:
        fp.add(item)
    return fp.hexdigest()


def known_length(items: Any) -> int | None:
    """``len(items)`` when the source has one (lists, map-style datasets, ``LazyJsonl``), else None."""
    try:
        return len(items)
    except TypeError:
        return None


class ItemStream:
    """Validated ``ScoreItem``s from any iterable, lazily, with the bookkeeping the scorer needs.

    Args:
        items: dicts or ``ScoreItem``s (see ``culnig_ext.data.items``), any iterable.
        vocab_size: refuse token ids outside the vocabulary.
        max_items: stop after this many input items (before sharding).
        shard: ``(k, n)``: keep items at input positions ``k, k+n, ...``.
    """

    def __init__(self, items: Iterable[Any], *, vocab_size: int | None = None, max_items: int | None = None,
                 shard: tuple[int, int] | None = None) -> None:
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.source = items
        self.vocab_size = vocab_size
        self.max_items = max_items
        self.shard = shard
        self.fingerprint = Fingerprint()
        self.id_hashes = array("q")
        self.read = 0  # input positions consumed (before sharding)
        self.groups: list[str] = []  # in order of first appearance
        self._group_set: set[str] = set()
        total = known_length(items)
        if total is not None and max_items is not None:
            total = min(total, max_items)
        if total is not None and shard is not None:
            k, n = shard
            total = len(range(k, total, n))
        self.total = total

    def __iter__(self) -> Iterator[ScoreItem]:
        for position, raw in enumerate(self.source):
            if self.max_items is not None and position >= self.max_items:
                break
            self.read = position + 1
            if self.shard is not None and position % self.shard[1] != self.shard[0]:
                continue
            item = as_score_item(raw, position=position, vocab_size=self.vocab_size)
            self.fingerprint.add(item)
            if item.group not in self._group_set:
                self._group_set.add(item.group)
                self.groups.append(item.group)
            self.id_hashes.append(item_hash(item.id))
            yield item

    def sorted_id_hashes(self) -> np.ndarray:
        """The item id hashes, sorted, ``int64``; raises ``ItemError`` if two items share an id."""
        hashes = np.frombuffer(self.id_hashes, dtype=np.int64) if len(self.id_hashes) else np.zeros(0, np.int64)
        order = np.argsort(hashes, kind="stable")
        ordered = hashes[order]
        dup = np.nonzero(ordered[1:] == ordered[:-1])[0]
        if len(dup):
            first, second = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
            raise ItemError(f"the items at stream positions {first} and {second} (counting kept items from 0) have "
                            "the same id; item ids must be unique")
        return ordered


def windowed_batches(items: Iterable[ScoreItem], batch_size: int, window: int) -> Iterator[list[list[ScoreItem]]]:
    """Windows of ``window`` batches: each window's items sorted by fed length (stable) and cut into batches.

    Memory is bounded by one window (``window * batch_size`` items); the order depends only on the input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if window < 1:
        raise ValueError(f"window must be >= 1 batch, got {window}")
    size = batch_size * window
    buf: list[ScoreItem] = []

    def cut(chunk: list[ScoreItem]) -> list[list[ScoreItem]]:
        chunk = sorted(chunk, key=lambda it: len(it.fed_ids))
        return [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]

    for item in items:
        buf.append(item)
        if len(buf) == size:
            yield cut(buf)
            buf = []
    if buf:
        yield cut(buf)


_DONE = object()


@dataclass
class _Failure:
    exc: BaseException


def background(iterator: Iterable[Any], ahead: int = 2) -> Iterator[Any]:
    """Run ``iterator`` in a daemon thread, at most ``ahead`` elements ahead of the consumer (bounded memory).

    Tokenizers release the GIL, so tokenising the next window overlaps with the model's forward/backward. An
    exception in the producer is re-raised in the consumer; closing the consumer stops the producer.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, ahead))
    stop = threading.Event()

    def put(obj: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for element in iterator:
                if not put(element):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failure(exc))

    thread = threading.Thread(target=produce, name="culnig-tokenise", daemon=True)
    thread.start()
    try:
        while True:
            element = q.get()
            if element is _DONE:
                return
            if isinstance(element, _Failure):
                raise element.exc
            yield element
    finally:
        stop.set()
        thread.join(timeout=5)


# ------------------------------------------------------------------------------------------------ JSONL files
class LazyJsonl:
    """A JSON Lines file read one line at a time each time it is iterated; ``len`` counts its non-blank lines
    (a fast byte scan) so progress bars have a total."""

    def __init__(self, path: str | os.PathLike, parse: Callable[[Mapping[str, Any], str], Any]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such item file: {self.path}")
        self.parse = parse
        self._len: int | None = None

    def __len__(self) -> int:
        if self._len is None:
            n = 0
            with open(self.path, "rb") as f:
                for line in f:
                    n += bool(line.strip())
            self._len = n
        return self._len

    def __iter__(self) -> Iterator[Any]:
        from culnig_ext.data.tabular import jsonl_rows

        for row in jsonl_rows(self.path):
            yield self.parse(row.data, row.where)


def _score_item_row(data: Mapping[str, Any], where: str) -> ScoreItem:
    return as_score_item(data, position=0, where=where)


def read_score_jsonl(path: str | os.PathLike) -> LazyJsonl:
    """Encoded items (``{"id", "input_ids", "answer_id" | "target_ids", "group"}`` per line), read lazily."""
    return LazyJsonl(path, _score_item_row)


def read_item_jsonl(path: str | os.PathLike) -> LazyJsonl:
    """Canonical ``MCItem`` lines (``culnig_ext.data`` schema), read lazily; errors name the file and line."""
    from culnig_ext.data.schema import MCItem

    return LazyJsonl(path, lambda data, where: MCItem.from_dict(data, where=where))


def select_split(items: Iterable[Any], split: str, max_per_question: int | None = 5) -> Iterator[Any]:
    """Lazy form of ``data.split_items``: keep the split's topics and at most ``max_per_question`` items per
    (group, question_id). Memory grows with the number of distinct questions, not items."""
    from culnig_ext.data.splits import split_items

    counts: dict[tuple[str, str], int] = {}
    for item in items:
        if not split_items([item], split, max_per_question=None):
            continue
        if max_per_question is not None and item.question_id is not None:
            key = (item.group, item.question_id)
            counts[key] = counts.get(key, 0) + 1
            if counts[key] > max_per_question:
                continue
        yield item


def encode_lazily(items: Iterable[Any], tokenizer: Any, *, format: str = "letter", control: str | None = None
                  ) -> Iterator[ScoreItem]:
    """Lazy form of ``data.encode``: one ``MCItem`` in, one ``ScoreItem`` out."""
    from culnig_ext.data.prompts import encode

    for item in items:
        yield from encode([item], tokenizer, format=format, control=control)


class Lazy:
    """An iterable that calls ``make()`` each time it is iterated (so a stream can be read twice) and reports
    ``total`` as its length when known."""

    def __init__(self, make: Callable[[], Iterable[Any]], total: int | None = None) -> None:
        self.make = make
        self.total = total

    def __iter__(self) -> Iterator[Any]:
        return iter(self.make())

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("length unknown")
        return self.total



def lazy_item_source(source: str, *, split: str = "all", seed: int = 0, max_per_question: int | None = 5) -> Any:
    """The items of ``source`` (``data.load_items`` syntax) as an iterable of ``MCItem``: a canonical ``.jsonl``
    item file is read lazily (one validating pass first counts the items, for the progress bar, and fails fast on
    a bad line before any model is loaded); any other source is loaded as a list by ``data.load_items``."""
    from culnig_ext.data.sources import has_mcqid, load_items

    from culnig_ext.data.schema import SchemaError

    path = Path(source)
    if path.suffix.lower() == ".jsonl" and path.is_file() and not has_mcqid(path):
        lines = read_item_jsonl(path)
        hashes = array("q")

        def recorded() -> Iterator[Any]:
            for item in lines:
                hashes.append(item_hash(item.id))
                yield item

        count = sum(1 for _ in select_split(recorded(), split, max_per_question))
        if not len(hashes):
            raise SchemaError(f"{path}: no items")
        _refuse_duplicate_ids(path, hashes)
        if count == 0:
            raise SchemaError(f"source {source!r}: no items left for split {split!r}")
        return Lazy(lambda: select_split(lines, split, max_per_question), total=count)
    return load_items(source, split=split, seed=seed, max_per_question=max_per_question)


def _refuse_duplicate_ids(path: Path, hashes: array) -> None:
    """Like ``data.read_jsonl``: two lines with one id are refused naming both lines. Only the 64-bit hashes of the
    ids are kept (8 bytes an item); the file is read again to name the lines only when two hashes collide."""
    from culnig_ext.data.schema import SchemaError
    from culnig_ext.data.tabular import jsonl_rows

    ordered = np.sort(np.frombuffer(hashes, dtype=np.int64))
    same = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(same):
        return
    suspects = set(int(h) for h in same)
    first: dict[str, str] = {}
    for row in jsonl_rows(path):
        item_id = str(row.data.get("id"))
        if item_hash(item_id) in suspects:
            if item_id in first:
                raise SchemaError(f"{row.where}: field 'id': duplicate id {item_id!r} (first at {first[item_id]})")
            first[item_id] = row.where


def encoded(items: Any, tokenizer: Any, *, format: str = "letter", control: str | None = None) -> Lazy:
    """``items`` (``MCItem``s) encoded lazily for the scorer; re-iterable, with the source's length when known."""
    return Lazy(lambda: encode_lazily(items, tokenizer, format=format, control=control), total=known_length(items))
