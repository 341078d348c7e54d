"""Provenance: tables record dtype, attention implementation, weights hash, package version, prompt format, control
and clamp; ``culnig merge`` refuses other models, sites, dtype, clamp and overlapping items naming the file and the
field; pipeline reuse recomputes a table whose provenance differs."""
from __future__ import annotations

import hashlib
import logging

import pytest
import torch

import culnig_ext
from culnig_ext.cli import main as cli
from culnig_ext.scoring.cache import score_cached
from culnig_ext.scoring.provenance import weights_hash
from culnig_ext.scoring.table import ScoreTable
from tests.fixtures import random_items, tiny_model
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("culnig merge: error: ")
    return err[0]


def test_tables_record_their_provenance():
    table = culnig_ext.score(tiny_model("llama", dtype=torch.float32), random_items(3), clamp_min=0.0,
                             progress=False, provenance={"prompt_format": "cloze", "control": "empty"})
    meta = table.metadata
    assert (meta["dtype"], meta["attn_implementation"], meta["clamp_min"]) == ("float32", "sdpa", "0.0")
    assert (meta["prompt_format"], meta["control"]) == ("cloze", "empty")
    assert meta["package_version"] == culnig_ext.__version__ and meta["model"] == "LlamaForCausalLM"


def test_weights_hash_follows_the_bytes(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 100)
    first = weights_hash(f)
    assert first == "sha256:" + hashlib.sha256(b"w.safetensors:100\n" + b"a" * 100).hexdigest()[:16]
    assert weights_hash(tmp_path) == first  # a folder: its weight files' names, sizes and bytes
    (tmp_path / "notes.txt").write_text("not weights")
    assert weights_hash(tmp_path) == first
    f.write_bytes(b"a" * 99 + b"b")
    assert weights_hash(f) != first


def test_merge_refusals_and_a_good_merge(tmp_path, capsys):
    model = tiny_model("llama")
    items = random_items(9, seed=8)

    def save(name, table):
        path = tmp_path / f"{name}.safetensors"
        table.save(path)
        return str(path)

    full = culnig_ext.score(model, items, batch_size=4, progress=False)
    a = save("a", culnig_ext.score(model, items, batch_size=4, progress=False, shard=(0, 2)))
    b = save("b", culnig_ext.score(model, items, batch_size=4, progress=False, shard=(1, 2)))
    out = tmp_path / "m.safetensors"
    assert cli.main(["merge", a, b, "--out", str(out)]) == 0
    merged = ScoreTable.load(out)
    order = [merged.groups.index(g) for g in full.groups]  # merged rows: groups in order of first appearance
    assert merged.counts[order].tolist() == full.counts.tolist()
    assert merged.metadata["dataset_fingerprint"] == full.metadata["dataset_fingerprint"]
    assert torch.equal(merged.item_hashes, full.item_hashes)
    for site in full.sites:
        torch.testing.assert_close(merged[site][order], full[site], rtol=1e-12, atol=1e-16)
    capsys.readouterr()

    others = {
        "dtype": culnig_ext.score(tiny_model("llama", dtype=torch.float32), items[1::2], progress=False),
        "clamp_min": culnig_ext.score(model, items[1::2], clamp_min=0.0, progress=False),
        "sites": culnig_ext.score(model, items[1::2], sites=["layers.0.mlp.gate_proj"], progress=False),
        "model": culnig_ext.score(tiny_model("qwen3"), items[1::2], progress=False),
        "overlap": culnig_ext.score(model, items[:3], progress=False),
    }
    expected = {
        "dtype": f"{tmp_path}/dtype.safetensors has dtype='float32', {a} has 'float64'",
        "clamp_min": "clamp_min='0.0'",
        "sites": f"{tmp_path}/sites.safetensors: other sites than {a}",
        "model": f"{tmp_path}/model.safetensors: scores of model 'Qwen3ForCausalLM'",
        "overlap": f"{a} and {tmp_path}/overlap.safetensors share 2 item",
    }
    for name, table in others.items():
        path = save(name, table)
        assert cli.main(["merge", a, path, "--out", str(tmp_path / "x.safetensors")]) == 1
        line = error_line(capsys)
        assert any(part in line for part in expected[name].split("|")), (name, line)
    assert not (tmp_path / "x.safetensors").exists(), "nothing is written by a refused merge"


def test_pipeline_reuse_recomputes_on_other_provenance(tmp_path, caplog):
    items = random_items(4, seed=3)
    path = tmp_path / "neur.safetensors"

    def run(model, **kw):  # what score_cached logs (the "culnig" logger), for this call only
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="culnig"):
            table = score_cached(path, model, items, clamp_min=None, batch_size=4, progress=False, desc="t", **kw)
        return table, "\n".join(r.getMessage() for r in caplog.records)

    model = tiny_model("llama")
    first, _ = run(model)
    again, said = run(model)
    assert "reusing" in said and again.fingerprint() == first.fingerprint()
    _, said = run(tiny_model("llama", dtype=torch.float32))
    assert "dtype='float64', this run has 'float32': recomputing" in said
    assert ScoreTable.load(path).metadata["dtype"] == "float32"
    _, said = run(tiny_model("llama", dtype=torch.float32), provenance={"prompt_format": "letter"})
    assert "prompt_format='', this run has 'letter': recomputing" in said
