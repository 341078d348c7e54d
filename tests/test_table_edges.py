"""ScoreTable's own checks and views, on tables built by hand (expectations written out here): shapes refused, the
normalizers, the kinds of sites, group lookup, the fingerprint's inputs, and files that are not score tables."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from culnig_ext.table import ScoreTable

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
