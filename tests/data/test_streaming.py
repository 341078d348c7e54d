"""Streaming item sources: generators, datasets.IterableDataset and lazily read JSONL score the same table as a list;
reading stays a bounded number of windows ahead of the model; windows are length-sorted; errors name file and line;
fingerprints are incremental and add up over shards."""
from __future__ import annotations

import json

import pytest
import torch

import culnig_ext
from culnig_ext.data.items import ItemError
from culnig_ext.data.streaming import (
    ItemStream,
    ScoreItem,
    background,
    combine_fingerprints,
    read_score_jsonl,
    windowed_batches,
)
from tests.fixtures import random_items, tiny_model
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)


def item(i: int, length: int, group: str = "A") -> ScoreItem:
    return ScoreItem(id=f"i{i}", input_ids=tuple(range(3, 3 + length)), group=group, target_ids=(5,))


def test_windows_are_length_sorted_stably_and_cut_into_batches():
    lengths = [5, 2, 7, 2, 3, 9, 1]
    items = [item(i, n) for i, n in enumerate(lengths)]
    windows = list(windowed_batches(iter(items), batch_size=2, window=2))
    # windows of 4 items: [5,2,7,2] -> sorted ids i1,i3 (2,2 stable), i0 (5), i2 (7); then [3,9,1] -> i6,i4,i5
    assert [[[it.id for it in b] for b in w] for w in windows] == [[["i1", "i3"], ["i0", "i2"]], [["i6", "i4"], ["i5"]]]


def test_generator_iterable_dataset_and_jsonl_give_the_list_table(tmp_path):
    from datasets import IterableDataset

    model = tiny_model("qwen3")
    items = random_items(14, seed=6, multi_token=True)
    as_list = culnig_ext.score(model, items, batch_size=3, window=2, progress=False)
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    sources = {
        "generator": (dict(it) for it in items),
        "IterableDataset": IterableDataset.from_generator(lambda: iter(items)),
        "jsonl": read_score_jsonl(path),
    }
    for name, source in sources.items():
        table = culnig_ext.score(model, source, batch_size=3, window=2, progress=False)
        assert table.groups == as_list.groups and table.counts.tolist() == as_list.counts.tolist(), name
        assert table.metadata["dataset_fingerprint"] == as_list.metadata["dataset_fingerprint"], name
        for site in as_list.sites:  # same windows, same batches: the same bits
            assert torch.equal(table[site], as_list[site]), (name, site)


def test_reading_stays_a_bounded_number_of_windows_ahead():
    model = tiny_model("llama")
    pulled = {"n": 0}
    at_batch: list[int] = []

    def items():
        for it in random_items(60, seed=1):
            pulled["n"] += 1
            yield it

    handle = model.model.embed_tokens.register_forward_pre_hook(lambda m, a: at_batch.append(pulled["n"]))
    try:
        table = culnig_ext.score(model, items(), batch_size=2, window=3, progress=False)
    finally:
        handle.remove()
    assert table.num_items == 60
    # window = 6 items; the background reader holds at most 2 windows queued + 1 being built, the model 1
    assert max(n - 2 * k for k, n in enumerate(at_batch)) <= 4 * 6


def test_total_is_known_for_sized_sources_only(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(json.dumps(it) for it in random_items(7)) + "\n\n")
    assert ItemStream(read_score_jsonl(path)).total == 7
    assert ItemStream(random_items(7), shard=(1, 3)).total == 2  # positions 1, 4
    assert ItemStream(random_items(7), max_items=5).total == 5
    assert ItemStream(iter(random_items(7))).total is None


def test_bad_jsonl_line_is_named(tmp_path):
    rows = random_items(5)
    rows[3] = {"id": "bad", "input_ids": [4, 5], "group": "A"}
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ItemError, match=f"item 'bad' \\({path}, line 4\\): give exactly one of"):
        culnig_ext.score(tiny_model("llama"), read_score_jsonl(path), progress=False)


def test_duplicate_ids_in_a_stream_are_refused():
    items = random_items(6)
    items[4] = dict(items[4], id=items[1]["id"])
    with pytest.raises(ItemError, match="positions 1 and 4 .* same id"):
        culnig_ext.score(tiny_model("llama"), iter(items), progress=False)


def test_background_reraises_the_producers_error():
    def produce():
        yield 1
        raise KeyError("boom")

    got = []
    with pytest.raises(KeyError, match="boom"):
        for x in background(produce()):
            got.append(x)
    assert got == [1]


def test_shard_fingerprints_add_up_to_the_full_fingerprint():
    model = tiny_model("llama")
    items = random_items(9, seed=2)
    full = culnig_ext.score(model, items, batch_size=4, progress=False)
    shards = [culnig_ext.score(model, items, batch_size=4, progress=False, shard=(k, 3)) for k in range(3)]
    fps = [t.metadata["dataset_fingerprint"] for t in shards]
    assert len(set(fps)) == 3
    assert combine_fingerprints(fps) == full.metadata["dataset_fingerprint"]
    changed = culnig_ext.score(model, [dict(items[0], answer_id=items[0]["answer_id"] % 90 + 4)] + items[1:],
                               batch_size=4, progress=False)
    assert changed.metadata["dataset_fingerprint"] != full.metadata["dataset_fingerprint"]


def _hand_hash(item_id: str) -> int:
    import hashlib
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little", signed=True)


# (max_items, batch_size, window, shard): the cap at, inside and past the data; shards that do and do not hold the
# item just past the cap; windows that end exactly at, before and after the cap.
LIMITS = [(5, 2, 1, None), (5, 1, 5, None), (5, 2, 2, (0, 2)), (5, 3, 1, (1, 2)), (6, 2, 1, (0, 3)),
          (6, 4, 2, (2, 3)), (1, 1, 1, None), (1, 2, 3, (0, 2)), (12, 2, 3, (0, 4)), (13, 3, 2, None),
          (20, 2, 2, (1, 3)), (None, 2, 2, (2, 5))]


@pytest.mark.parametrize("max_items, batch_size, window, shard", LIMITS)
def test_max_items_window_and_shard_score_each_item_exactly_once(max_items, batch_size, window, shard):
    items = random_items(13, seed=4)  # groups A, B, C at positions 0, 1, 2 mod 3
    # by hand: the first max_items input positions, then the shard's positions k, k + n, ...
    positions = [p for p in range(13 if max_items is None else min(13, max_items))
                 if shard is None or p % shard[1] == shard[0]]
    want_ids = [items[p]["id"] for p in positions]
    want_counts = {g: sum(items[p]["group"] == g for p in positions) for g in "ABC"}

    stream = ItemStream(items, max_items=max_items, shard=shard)
    assert stream.total == len(positions)
    seen = [it.id for w in windowed_batches(stream, batch_size, window) for b in w for it in b]
    assert sorted(seen) == sorted(want_ids)  # each once: no duplicate, nothing past the cap
    assert stream.read == (13 if max_items is None else min(13, max_items))

    table = culnig_ext.score(tiny_model("llama"), items, batch_size=batch_size, window=window, max_items=max_items,
                             shard=shard, progress=False)
    assert table.num_items == len(positions)
    assert {g: c for g, c in zip(table.groups, table.counts.tolist())} == {g: c for g, c in want_counts.items() if c}
    assert table.item_hashes.tolist() == sorted(_hand_hash(i) for i in want_ids)
