"""``culnig plant`` then ``culnig validate`` on a tiny random Llama, end to end through the CLI: every output exists
and parses, the set figures are recomputed here from the saved sets and planted.json, every method's figures are
there with intervals, and a second run gives the same numbers."""
from __future__ import annotations

import json

import pytest
import torch

from culnig_ext.cli import main as cli
from culnig_ext.selection.neurons import NeuronSet
from tests.plant_fixtures import save_tiny_model
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)

METHODS = ["culnig", "prob", "no_control", "no_crc", "raw", "lape", "random"]
PLANT = ["--countries", "4", "--facts-per-country", "3", "--neurons-per-country", "4", "--layers", "all",
         "--kin-pairs", "1", "--kin-share", "0.5", "--reading-per-country", "2", "--lr", "0.05", "--epochs", "4",
         "--train-batch-size", "8", "--batch-size", "16", "--no-progress"]
# fractions large enough for 96 MLP and 64 attention neurons (the paper's would select none)
VALIDATE = ["--n-boot", "20", "--sample-sizes", "4,8,16", "--sample-draws", "2", "--random", "2", "--t-mlp", "0.1",
            "--t-attn", "0.05", "--r-mlp", "0.05", "--r-attn", "0.03", "--t-specific", "0.05", "--r-specific",
            "0.02", "--max-general-items", "8", "--batch-size", "16", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ground_truth")
    base = save_tiny_model(root / "base")
    assert cli.main(["plant", "--model", str(base), "--out", str(root / "planted"), *PLANT]) == 0
    for name in ("v1", "v2"):
        assert cli.main(["validate", str(root / "planted"), "--out", str(root / name), *VALIDATE]) == 0
    return root


def test_outputs(runs):
    planted, out = runs / "planted", runs / "v1"
    assert (planted / "model" / "model.safetensors").is_file() and (planted / "planted.json").is_file()
    for name in ("validation.md", "validation.json", "timings.json", "roc.png", "pr.png", "sample_efficiency.png",
                 "layers.png", "kinship.png", "tables/neur.safetensors", "tables/ctrl.safetensors",
                 "tables/crc.safetensors", "tables/lape.safetensors"):
        assert (out / name).is_file(), name
    fig = json.loads((out / "validation.json").read_text())
    assert list(fig["ranking"]) == METHODS and list(fig["negative_control"]["ranking"]) == METHODS
    for method in METHODS:
        for view in ("general", "specific_mean"):
            values = fig["ranking"][method][view]
            assert 0.0 <= values["auroc"] <= 1.0 and 0.0 <= values["average_precision"] <= 1.0
            low, high = fig["intervals"][method][view]["auroc"]
            assert 0.0 <= low <= high <= 1.0
    assert fig["base_comparison"]["entries_changed_outside"] == 0
    assert fig["sample_efficiency"]["sizes"] == [4, 8, 16, 24]  # 4 countries x 3 facts x 2 phrasings
    assert {row["set"] for row in fig["inhibition"]["sets"]} == {
        "Fictional facts (held-out phrasings)", "Reading comprehension (fictional names)", "General knowledge"}
    md = (out / "validation.md").read_text()
    assert "## Negative control" in md and "## Inhibition" in md and "## Sample efficiency" in md
    assert "4 fictional countries, 4 planted MLP gate neurons each" in md
    crc = fig["crc_filter"]
    assert (f"removes {crc['removed']} neurons, {crc['planted_removed']} of the {crc['planted']} planted ones"
            in md) and crc["planted"] == fig["planted"]["union"]


def test_set_figures_recomputed_from_the_files(runs):
    """Precision and recall of every saved set against planted.json, counted here."""
    gt = json.loads((runs / "planted" / "planted.json").read_text())
    fig = json.loads((runs / "v1" / "validation.json").read_text())
    truth = {c: {(s, i) for s, i in pairs} for c, pairs in gt["neurons"].items()}
    union = set().union(*truth.values())
    for method in METHODS:
        general = NeuronSet.load(runs / "v1" / fig["set_files"][f"{method}/general"])
        mlp = {(n.site, n.index) for n in general if ".mlp." in n.site}
        hits = len(mlp & union)
        assert fig["sets"][method]["general"]["hits"] == hits
        assert fig["sets"][method]["general"]["recall"] == pytest.approx(hits / len(union))
        for country, want in truth.items():
            found = {(n.site, n.index) for n in NeuronSet.load(runs / "v1" / fig["set_files"][f"{method}/{country}"])}
            assert fig["sets"][method]["specific"][country]["recall"] == pytest.approx(len(found & want) / len(want))
    random = NeuronSet.load(runs / "v1" / fig["set_files"]["random/general"])
    assert len(random) == len(union)


def test_same_numbers_twice(runs):
    a = json.loads((runs / "v1" / "validation.json").read_text())
    b = json.loads((runs / "v2" / "validation.json").read_text())
    a["settings"].pop("out")
    b["settings"].pop("out")
    assert a == b


def test_validate_refuses_a_folder_that_is_not_planted(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path), "--out", str(tmp_path / "v")]) == 1
    assert "planted.json is missing" in capsys.readouterr().err


def test_culnig_figures_recomputed_from_the_saved_tables(runs):
    """CULNIG's all-countries AUROC from OUT/tables and planted.json, with plain torch and scikit-learn: contrast
    neur/N - ctrl/N over the MLP gate sites, the top floor(n * r_mlp) by CountryRC ranked last."""
    import math

    from sklearn.metrics import roc_auc_score

    from culnig_ext.scoring.table import ScoreTable

    gt = json.loads((runs / "planted" / "planted.json").read_text())
    fig = json.loads((runs / "v1" / "validation.json").read_text())
    tables = {r: ScoreTable.load(runs / "v1" / "tables" / f"{r}.safetensors") for r in ("neur", "ctrl", "crc")}
    sites = sorted((s for s in tables["neur"].sites if ".mlp." in s), key=lambda s: int(s.split(".")[1]))
    n_items = float(tables["neur"].counts.sum())
    score = torch.cat([tables["neur"][s].sum(0) / n_items - tables["ctrl"][s].sum(0) / float(tables["ctrl"].counts.sum())
                       for s in sites])
    crc = torch.cat([tables["crc"][s].sum(0) for s in sites])
    removed = torch.topk(crc, math.floor(crc.numel() * fig["settings"]["r_mlp"])).indices
    score[removed] = score.min() - 1
    truth = torch.zeros(score.numel(), dtype=torch.bool)
    offsets = {s: i * tables["neur"][s].shape[1] for i, s in enumerate(sites)}
    for pairs in gt["neurons"].values():
        for site, index in pairs:
            truth[offsets[site] + index] = True
    assert fig["ranking"]["culnig"]["general"]["auroc"] == pytest.approx(roc_auc_score(truth.numpy(), score.numpy()),
                                                                       abs=1e-12)


def test_table_weights_recomputed_from_the_saved_tables(runs):
    """The control's share of the scoring items' summed MLP score, per item, from OUT/tables."""
    from culnig_ext.scoring.table import ScoreTable

    fig = json.loads((runs / "v1" / "validation.json").read_text())
    tables = {r: ScoreTable.load(runs / "v1" / "tables" / f"{r}.safetensors") for r in ("neur", "ctrl")}
    per_item = {r: sum(float(t[s].sum()) for s in t.sites if ".mlp." in s) / float(t.counts.sum())
                for r, t in tables.items()}
    assert fig["tables"]["ctrl_share"] == pytest.approx(per_item["ctrl"] / per_item["neur"], rel=1e-9)
    assert fig["tables"]["mean_p_ctrl"] == pytest.approx(float(tables["ctrl"].prob_sums.sum()) / 24, rel=1e-9)


def test_the_benchmark_reads_the_headline_figures(runs):
    """benchmarks/recovery.py: the headline figures are validation.json's, and a run set beside itself ties."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("recovery_bench", Path(__file__).parents[2] / "benchmarks" / "recovery.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    fig = json.loads((runs / "v1" / "validation.json").read_text())
    head = bench.headline(fig)
    assert list(head["methods"]) == METHODS
    assert head["methods"]["culnig"]["general_auroc"] == fig["ranking"]["culnig"]["general"]["auroc"]
    assert head["methods"]["raw"]["specific_set_recall"] == fig["sets"]["raw"]["specific_recall_mean"]
    assert head["negative_control_auroc"]["culnig"] == fig["negative_control"]["ranking"]["culnig"]["general"]["auroc"]
    text = bench.table(head, head)
    assert "beats" not in text and "below" not in text and text.count("ties") == len(METHODS) * len(head["methods"]["culnig"])
