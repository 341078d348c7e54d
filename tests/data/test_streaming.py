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


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models: intra-op threads only add overhead on a busy 2-core machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
