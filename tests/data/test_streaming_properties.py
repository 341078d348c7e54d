"""Property tests (hypothesis) of the streaming item pipeline (``culnig_ext.data.streaming``): for any window,
batch size, shard and max_items, every kept item comes out exactly once, in the order of a plain-Python reference
(positions ``< max_items`` with ``position % n == k``; each window of ``window * batch_size`` consecutive items
sorted stably by fed length and cut into batches); the shards partition the stream; the fingerprint is additive."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from culnig_ext.data.streaming import (
    ItemStream, background, combine_fingerprints, dataset_fingerprint, windowed_batches,
)

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)


@st.composite
def raw_items(draw):
    n = draw(st.integers(0, 40))
    return [{"id": f"it{k}", "group": draw(st.sampled_from("AB")),
             "input_ids": [5] * draw(st.integers(1, 4)),  # few lengths: ties in the length sort
             "target_ids": [7] * draw(st.integers(1, 2))} for k in range(n)]


def fed_len(raw):
    return len(raw["input_ids"]) + len(raw["target_ids"]) - 1


def reference_batches(kept, batch_size, window):
    size = batch_size * window
    out = []
    for start in range(0, len(kept), size):
        chunk = sorted(kept[start:start + size], key=fed_len)  # Python's sort is stable
        out.append([[it["id"] for it in chunk[i:i + batch_size]] for i in range(0, len(chunk), batch_size)])
    return out


@st.composite
def configs(draw):
    n = draw(st.integers(1, 4))
    shard = draw(st.none() | st.just((draw(st.integers(0, n - 1)), n)))
    return dict(batch_size=draw(st.integers(1, 5)), window=draw(st.integers(1, 4)), shard=shard,
                max_items=draw(st.none() | st.integers(1, 45)), as_generator=draw(st.booleans()),
                threaded=draw(st.booleans()))


@SETTINGS
@given(raw_items(), configs())
def test_every_kept_item_once_in_reference_order(raws, cfg):
    source = (r for r in raws) if cfg["as_generator"] else raws
    stream = ItemStream(source, max_items=cfg["max_items"], shard=cfg["shard"])
    windows = windowed_batches(stream, cfg["batch_size"], cfg["window"])
    got = [[[it.id for it in batch] for batch in w] for w in (background(windows) if cfg["threaded"] else windows)]

    limit = len(raws) if cfg["max_items"] is None else min(len(raws), cfg["max_items"])
    k, n = cfg["shard"] or (0, 1)
    kept = [raws[p] for p in range(limit) if p % n == k]
    assert got == reference_batches(kept, cfg["batch_size"], cfg["window"])
    flat = [i for w in got for b in w for i in b]
    assert sorted(flat) == sorted(it["id"] for it in kept) and len(set(flat)) == len(flat)
    assert all(1 <= len(b) <= cfg["batch_size"] for w in got for b in w)
    assert all(len(b) == cfg["batch_size"] for w in got for b in w[:-1])  # only a window's last batch is short
    assert stream.total == (None if cfg["as_generator"] else len(kept))
    assert stream.groups == list(dict.fromkeys(it["group"] for it in kept))
    assert len(stream.sorted_id_hashes()) == len(kept)


@SETTINGS
@given(raw_items(), st.integers(1, 5), st.none() | st.integers(1, 45))
def test_shards_partition_the_stream_and_fingerprints_add_up(raws, n, max_items):
    whole = ItemStream(raws, max_items=max_items)
    everything = [it.id for it in whole]
    parts = []
    for k in range(n):
        s = ItemStream(raws, max_items=max_items, shard=(k, n))
        parts.append(([it.id for it in s], s.fingerprint.hexdigest()))
    ids = [i for p, _ in parts for i in p]
    assert sorted(ids) == sorted(everything) and len(ids) == len(set(ids))
    assert everything == [r["id"] for r in raws[: max_items if max_items is not None else len(raws)]]
    assert combine_fingerprints(fp for _, fp in parts) == whole.fingerprint.hexdigest()
    # order-independent: the reversed items have the same fingerprint
    reversed_items = ItemStream(list(reversed(raws[: len(everything)])))
    assert dataset_fingerprint(reversed_items) == whole.fingerprint.hexdigest()
