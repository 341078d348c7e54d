"""ScoreTable's own checks and views, on tables built by hand (expectations written out here): shapes refused, the
normalizers, the kinds of sites, group lookup, the fingerprint's inputs, and files that are not score tables."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from culnig_ext.scoring.table import ScoreTable

GATE, Q = "layers.0.mlp.gate_proj", "layers.1.self_attn.q_proj"


def table(**overrides) -> ScoreTable:
    args = dict(groups=["A", "B"], counts=[2, 3],
                sums={GATE: torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), Q: torch.tensor([[0.5], [-0.5]])},
                prob_sums=[0.25, 1.5], metadata={"model": "m", "clamp_min": "", "dataset_fingerprint": "f"})
    args.update(overrides)
    return ScoreTable(**args)


def test_contents_dtypes_and_views():
    t = table()
    assert t.groups == ["A", "B"] and t.sites == [GATE, Q]
    assert t.counts.dtype == torch.int64 and t.counts.tolist() == [2, 3]
    assert t.prob_sums.dtype == torch.float64 and t.prob_sums.tolist() == [0.25, 1.5]
    assert t[GATE].dtype == torch.float64 and t[GATE].tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert t.num_items == 5
    assert t.sites_of_kind("mlp") == [GATE] and t.sites_of_kind("attn") == [Q]
    with pytest.raises(ValueError, match="unknown kind"):
        t.sites_of_kind("gate")
    assert t.group_index("A") == 0 and t.group_index("B") == 1
    with pytest.raises(KeyError, match="'C'"):
        t.group_index("C")
    assert repr(t) == "ScoreTable(2 groups, 5 items, 2 sites, 4 neurons, model='m')"
    # the table holds copies: changing the inputs afterwards changes nothing
    counts = torch.tensor([2, 3])
    t2 = table(counts=counts)
    counts[0] = 99
    assert t2.counts.tolist() == [2, 3]
    assert table(prob_sums=None).prob_sums.tolist() == [0.0, 0.0]


def test_normalizers():
    t = table()
    assert t.normalizer("count").tolist() == [2.0, 3.0] and t.normalizer("count").dtype == torch.float64
    assert t.normalizer("prob").tolist() == [0.25, 1.5]
    assert t.normalizer().tolist() == [2.0, 3.0]
    assert t.normalizer("none").tolist() == [1.0, 1.0] and t.normalizer("none").dtype == torch.float64
    with pytest.raises(ValueError, match="unknown normalisation"):
        t.normalizer("total")
    t.normalizer("prob")[0] = 7.0  # a copy
    assert t.prob_sums.tolist() == [0.25, 1.5]


@pytest.mark.parametrize("overrides, message", [
    (dict(groups=["A", "A"]), "duplicate group"),
    (dict(counts=[2, 3, 4]), "counts has shape"),
    (dict(counts=[[2, 3]]), "counts has shape"),
    (dict(prob_sums=[0.5]), "prob_sums has shape"),
    (dict(sums={GATE: torch.zeros(3)}), "must be"),
    (dict(sums={GATE: torch.zeros(3, 2)}), "must be"),
    (dict(sums={GATE: torch.zeros(2, 2, 1)}), "must be"),
])
def test_bad_shapes_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        table(**overrides)


def test_fingerprint_depends_on_every_part_but_the_format_stamp():
    base = table().fingerprint()
    assert len(base) == 16 and table().fingerprint() == base
    changed = [
        table(groups=["A", "C"]),
        table(counts=[2, 4]),
        table(prob_sums=[0.25, 1.0]),
        table(sums={GATE: torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]]), Q: torch.tensor([[0.5], [-0.5]])}),
        table(sums={GATE: torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])}),
        table(metadata={"model": "other", "clamp_min": "", "dataset_fingerprint": "f"}),
    ]
    assert len({t.fingerprint() for t in changed} | {base}) == len(changed) + 1
    stamped = table(metadata={"model": "m", "clamp_min": "", "dataset_fingerprint": "f", "format": "x"})
    assert stamped.fingerprint() == base


def test_save_load_round_trip_keeps_metadata(tmp_path):
    from culnig_ext import __version__

    t = table()
    path = t.save(tmp_path / "t.safetensors")
    back = ScoreTable.load(path)
    assert back.groups == t.groups and back.sites == t.sites
    assert back.counts.tolist() == [2, 3] and back.prob_sums.tolist() == [0.25, 1.5]
    assert back[GATE].tolist() == t[GATE].tolist() and back[Q].tolist() == t[Q].tolist()
    assert back.metadata["model"] == "m" and back.metadata["dataset_fingerprint"] == "f"
    assert back.metadata["package_version"] == __version__ and back.metadata["format"] == "culnig-scores/1"
    assert "groups" not in back.metadata and "sites" not in back.metadata
    kept = table(metadata={"model": "m", "package_version": "0.0.9"}).save(tmp_path / "v.safetensors")
    assert ScoreTable.load(kept).metadata["package_version"] == "0.0.9"


def test_files_that_are_not_score_tables_are_refused_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        ScoreTable.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="junk.safetensors.*not a readable"):
        ScoreTable.load(junk)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other), metadata={"format": "something/1"})
    with pytest.raises(ValueError, match="other.safetensors: format 'something/1'"):
        ScoreTable.load(other)
    short = tmp_path / "short.safetensors"
    save_file({"__counts__": torch.zeros(1, dtype=torch.int64)}, str(short),
              metadata={"format": "culnig-scores/1", "groups": json.dumps(["A"]), "sites": json.dumps([GATE])})
    with pytest.raises(ValueError, match=r"short.safetensors: missing tensors \[.*gate_proj.*__prob_sums__"):
        ScoreTable.load(short)


def test_counts_become_int64_whatever_their_type():
    t = table(counts=torch.tensor([2.0, 3.0]))
    assert t.counts.dtype == torch.int64 and t.counts.tolist() == [2, 3]


def test_merged_metadata_keeps_the_first_tables_and_adds_the_fingerprints():
    # Fingerprints are sums of per-item hashes mod 2^64 (hex), so the merge of disjoint shards carries the
    # fingerprint of the unsharded items: 0x...fa + 0x...fb, by hand.
    fa, fb = "00000000000000fa", "ffffffffffffff10"
    a = table(metadata={"model": "m", "clamp_min": "", "dataset_fingerprint": fa, "revision": "r1"})
    b = table(groups=["B", "C"], metadata={"model": "m", "clamp_min": "", "dataset_fingerprint": fb, "revision": "r1"})
    want = f"{(0xfa + 0xffffffffffffff10) % 2**64:016x}"
    assert want == "000000000000000a"
    for order in ([a, b], [b, a]):
        merged = ScoreTable.merge(order)
        assert merged.metadata["dataset_fingerprint"] == want
    assert ScoreTable.merge([a, b]).metadata == {"model": "m", "clamp_min": "", "dataset_fingerprint": want,
                                                 "revision": "r1"}
    # another revision is another model: refused, naming the field
    c = table(groups=["D"], counts=[1], prob_sums=[0.5], sums={GATE: torch.ones(1, 3), Q: torch.ones(1, 1)},
              metadata={"model": "m", "clamp_min": "", "dataset_fingerprint": "01", "revision": "r2"})
    with pytest.raises(ValueError, match="revision='r2'"):
        ScoreTable.merge([a, c])
    # tables without fingerprints: merged, and the merged one records none
    bare = [table(metadata={"model": "m"}), table(groups=["C"], counts=[1], prob_sums=[0.5],
                                                  sums={GATE: torch.ones(1, 3), Q: torch.ones(1, 1)},
                                                  metadata={"model": "m"})]
    merged = ScoreTable.merge(bare)
    assert merged.metadata == {"model": "m"}
    assert merged.counts.tolist() == [2, 3, 1]


# ---------------------------------------------------------------- item-id hashes, repr, the canonical header
def test_item_hashes_are_int64_and_kept_through_save_load_and_merge(tmp_path):
    a = table(item_hashes=torch.tensor([7, 3], dtype=torch.int32))
    assert a.item_hashes.dtype == torch.int64 and a.item_hashes.tolist() == [7, 3]
    loaded = ScoreTable.load(a.save(tmp_path / "a.safetensors"))
    assert loaded.item_hashes.dtype == torch.int64 and loaded.item_hashes.tolist() == [7, 3]
    b = table(groups=["B", "C"], item_hashes=[5, 1],
              metadata={"model": "m", "clamp_min": "", "dataset_fingerprint": "d"})
    b = ScoreTable.load(b.save(tmp_path / "b.safetensors"))  # both stamped with the package version
    merged = ScoreTable.merge([loaded, b])
    assert merged.item_hashes.tolist() == [1, 3, 5, 7]  # the union, sorted
    assert merged.groups == ["A", "B", "C"] and merged.counts.tolist() == [2, 5, 3]
    # A merged table still knows its items: merging it with one of its parts again is refused.
    with pytest.raises(ValueError, match="share 2 item"):
        ScoreTable.merge([merged, b])


def test_merge_checks_every_pair_for_shared_items_and_names_the_tables():
    a, b, c = (table(item_hashes=h) for h in ([1, 2], [3, 4], [4, 9]))
    with pytest.raises(ValueError, match="table 1 and table 2 share 1 item"):
        ScoreTable.merge([a, b, c])
    with pytest.raises(ValueError, match="y.st and z.st share 1 item"):
        ScoreTable.merge([a, b, c], names=["x.st", "y.st", "z.st"])
    with pytest.raises(ValueError, match=r"^y\.st records no item ids"):
        ScoreTable.merge([a, table(), c], names=["x.st", "y.st", "z.st"])


def test_merging_a_table_without_groups_adds_nothing():
    empty = table(groups=[], counts=[], prob_sums=[], sums={GATE: torch.zeros(0, 3), Q: torch.zeros(0, 1)},
                  metadata={"model": "m", "clamp_min": "", "dataset_fingerprint": "d"})
    merged = ScoreTable.merge([empty, table()])
    assert merged.groups == ["A", "B"] and merged.counts.tolist() == [2, 3]
    assert merged.prob_sums.tolist() == [0.25, 1.5]
    assert merged[GATE].tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]] and merged[Q].tolist() == [[0.5], [-0.5]]


def test_repr_names_groups_items_sites_neurons_and_model():
    assert repr(table()) == "ScoreTable(2 groups, 5 items, 2 sites, 4 neurons, model='m')"
    assert repr(table(metadata={})) == "ScoreTable(2 groups, 5 items, 2 sites, 4 neurons, model='?')"


def test_saved_header_is_sorted_compact_json_padded_with_spaces(tmp_path):
    # Equal tables must give equal bytes: the header is rewritten as sorted, compact, non-escaped JSON of the
    # length safetensors reserved. One of eight padding lengths fills the reserved length exactly.
    keys = ["zeta", "alpha", "omega", "beta", "kappa", "delta", "mu", "gamma", "epsilon", "lambda"]
    for pad in range(8):
        meta = {k: f"{k}-{i}" for i, k in enumerate(keys)}
        meta.update(model="Türkiye 日本", pad="x" * pad)
        path = table(metadata=meta).save(tmp_path / f"h{pad}.safetensors")
        raw = path.read_bytes()
        size = int.from_bytes(raw[:8], "little")
        text = raw[8 : 8 + size].rstrip(b" ")
        header = json.loads(text)
        assert text == json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert raw[8 + len(text) : 8 + size] == b" " * (size - len(text))
        assert ScoreTable.load(path).metadata["model"] == "Türkiye 日本"
