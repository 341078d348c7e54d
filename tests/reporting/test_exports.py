"""Exports: the tidy parquet/CSV table reads back into ScoreTables and NeuronSets equal to the run's, and the
Neuronpedia document validates against the schema and holds the hand-made run's neurons and items."""
from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import torch

from culnig_ext.reporting.exports import (TIDY_COLUMNS, export_run, export_tidy, neuronpedia_export,
                                          neuronpedia_schema, neuronpedia_source, read_tidy, sidecar, tidy_frames)
from culnig_ext.scoring.table import ScoreTable
from culnig_ext.selection.neurons import NeuronSet
from tests.reporting.run_folder import ATTN, CRC, CTRL, MLP, NEUR, QUESTIONS, make_run



def assert_tables_equal(a: ScoreTable, b: ScoreTable):
    assert a.groups == b.groups and a.sites == b.sites and a.metadata == b.metadata
    assert torch.equal(a.counts, b.counts) and torch.equal(a.prob_sums, b.prob_sums)
    for site in a.sites:
        assert torch.equal(a[site], b[site]), site
    assert (a.item_hashes is None) == (b.item_hashes is None)
    if a.item_hashes is not None:
        assert torch.equal(a.item_hashes, b.item_hashes)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_tidy_round_trip(tmp_path, fmt):
    run = make_run(tmp_path / "run")
    # awkward floats: the CSV must keep every bit
    odd = ScoreTable(["US", "UK", "Spain"], [2, 2, 4], {MLP: torch.tensor(NEUR[MLP], dtype=torch.float64) / 3,
                                                        ATTN: torch.tensor(NEUR[ATTN], dtype=torch.float64) * 1e-7},
                     prob_sums=[0.1, 0.2, 0.30000000000000004], metadata={"model": "tiny-model"},
                     item_hashes=torch.tensor([-5, 3, 2 ** 62], dtype=torch.int64))
    odd.save(run / "scores" / "neur.safetensors")
    out, side = export_tidy(run, tmp_path / f"t.{fmt}", fmt)
    assert side == sidecar(out) and side.name == f"t.{fmt}.meta.json"
    back = read_tidy(out)
    assert set(back) == {"scores/neur", "scores/ctrl", "scores/crc", "neurons/general", "neurons/specific/us",
                         "neurons/specific/spain"}
    for role in ("neur", "ctrl", "crc"):
        assert_tables_equal(back[f"scores/{role}"], ScoreTable.load(run / "scores" / f"{role}.safetensors"))
    assert back["neurons/general"] == NeuronSet.load(run / "neurons" / "general.json")
    assert back["neurons/specific/spain"] == NeuronSet.load(run / "neurons" / "specific" / "spain.json")


def test_tidy_rows_by_hand(tmp_path):
    frame, meta = tidy_frames(make_run(tmp_path / "run"))
    assert list(frame.columns) == TIDY_COLUMNS
    crc = frame[frame["source"] == "scores/crc"]
    assert len(crc) == 3 * (4 + 3)  # groups x neurons
    row = crc[(crc["site"] == ATTN) & (crc["index"] == 0) & (crc["group"] == "UK")]
    assert row["score"].tolist() == [CRC[ATTN][1][0]] and row["layer"].tolist() == [1]
    assert row["kind"].tolist() == ["attn"]
    general = frame[frame["source"] == "neurons/general"]
    assert list(zip(general["site"], general["index"], general["score"], general["group"])) == [
        (MLP, 0, 0.5, ""), (ATTN, 2, 0.75, "")]
    spain = frame[frame["source"] == "neurons/specific/spain"]
    assert set(spain["group"]) == {"Spain"}
    assert meta["sources"]["scores/ctrl"]["counts"] == {"US": 2, "UK": 2, "Spain": 4}
    assert CTRL  # the control sums are those of run_folder


def test_read_tidy_names_a_missing_sidecar(tmp_path):
    out, side = export_tidy(make_run(tmp_path / "run"), tmp_path / "t.csv", "csv")
    side.unlink()
    with pytest.raises(FileNotFoundError, match="t.csv.meta.json: the export's sidecar is missing"):
        read_tidy(out)


def test_neuronpedia_document(tmp_path):
    doc = neuronpedia_export(make_run(tmp_path / "run"))
    jsonschema.validate(doc, neuronpedia_schema())
    keys = {(f["layer"], f["index"]) for f in doc["features"]}
    assert keys == {("0-culnig-gate", "0"), ("1-culnig-q", "2"), ("0-culnig-gate", "1")}
    assert {f["modelId"] for f in doc["features"]} == {"tiny-model"}
    gate0 = next(f for f in doc["features"] if (f["layer"], f["index"]) == ("0-culnig-gate", "0"))
    assert gate0["culnig"] == {"site": MLP, "index": 0, "general_score": 0.5, "specific_scores": {"US": 0.25}}
    assert gate0["frac_nonzero"] == pytest.approx(2 / 3) and gate0["maxActApprox"] == 0.5
    acts = [a for a in doc["activations"] if (a["layer"], a["index"]) == ("0-culnig-gate", "0")]
    assert [(a["tokens"], a["values"], a["dataIndex"]) for a in acts] == [
        ([QUESTIONS[2]], [0.5], "i2"), ([QUESTIONS[0]], [0.25], "i0")]
    assert all(len(a["tokens"]) == len(a["values"]) for a in doc["activations"])
    expl = {(e["layer"], e["index"]): e["description"] for e in doc["explanations"]}
    assert expl[("1-culnig-q", "2")] == "CULNIG: culture-general, culture-specific (Spain) neuron"
    assert expl[("0-culnig-gate", "1")] == "CULNIG: culture-specific (Spain) neuron"


@pytest.mark.parametrize("edit, where", [
    (lambda d: d["features"][0].pop("modelId"), "modelId"),
    (lambda d: d["features"][0].update(index=3), "index"),
    (lambda d: d["activations"][0].update(tokens="one string"), "tokens"),
    (lambda d: d["explanations"][0].update(modelId="has space"), "modelId"),
    (lambda d: d.update(extra=1), "extra"),
])
def test_schema_refuses_what_neuronpedia_would(tmp_path, edit, where):
    doc = copy.deepcopy(neuronpedia_export(make_run(tmp_path / "run")))
    edit(doc)
    with pytest.raises(jsonschema.ValidationError, match=where):
        jsonschema.validate(doc, neuronpedia_schema())


def test_source_names():
    assert neuronpedia_source("layers.12.mlp.gate_proj") == "12-culnig-gate"
    assert neuronpedia_source("layers.3.self_attn.v_proj") == "3-culnig-v"


def test_export_run_defaults_and_bad_format(tmp_path):
    run = make_run(tmp_path / "run")
    (path,) = export_run(run, "neuronpedia")
    assert path == run / "export" / "neuronpedia.json"
    assert json.loads(path.read_text())["format"] == "culnig-neuronpedia/1"
    with pytest.raises(ValueError, match="--format must be one of parquet, csv, neuronpedia, got 'xlsx'"):
        export_run(run, "xlsx")
