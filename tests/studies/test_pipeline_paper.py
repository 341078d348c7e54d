"""``culnig run --protocol paper`` on a tiny random Llama: the paper's CountryRC items are scored (8 countries x 4
variants x the first half of the templates), both random baselines are evaluated and reported side by side, and the
report states the protocol."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from culnig_ext.cli import main as cli
from culnig_ext.data import FRAME_QUESTION, load_items
from culnig_ext.studies.config import PAPER_PRESET, RunConfig, attn_implementation, paper_config
from culnig_ext.scoring.table import ScoreTable

from tests.shared_data import BLEND, needs_shared_data
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)
from tests.fixtures import save_random_llama
FRACTIONS = ["--t-mlp", "0.1", "--t-attn", "0.05", "--r-mlp", "0.05", "--r-attn", "0.03", "--t-specific", "0.05",
             "--r-specific", "0.02"]


def paper_tokenizer() -> PreTrainedTokenizerFast:
    """One token per word of the builtin data and the paper's CountryRC prompts, plus single letters and digits."""
    texts = ["Question: Answer:", FRAME_QUESTION]
    for source in ("builtin:cultural", "builtin:general", "paper:countryrc"):
        for item in load_items(source, max_per_question=None):
            texts += [item.question, *item.choices]
    pre = pre_tokenizers.Whitespace()
    words = {w for text in texts for w, _ in pre.pre_tokenize_str(text)} | set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + sorted(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_paper")
    tok = paper_tokenizer()
    return save_random_llama(path, tok, hidden=32, intermediate=48, layers=2, heads=4, kv_heads=2, max_positions=512)


def test_paper_preset():
    cfg = paper_config(out="x")
    assert (cfg.protocol, cfg.crc, cfg.dtype, cfg.format, cfg.n_random_paper) == (
        "paper", "paper:countryrc", "bfloat16", "letter", 10)
    assert RunConfig().protocol == "ours" and RunConfig().n_random_paper == 0
    assert attn_implementation(paper_config(model="gemma3-270m")) == "eager"
    assert attn_implementation(RunConfig(model="gemma3-270m")) is None  # load_model's own choice (soft-capping)
    assert attn_implementation(paper_config(model="gemma3-270m", attn_implementation="sdpa")) == "sdpa"  # explicit
    assert attn_implementation(paper_config(model="smollm2")) is None
    assert set(PAPER_PRESET) <= {f for f in RunConfig.__dataclass_fields__}


@needs_shared_data
def test_run_protocol_paper_cli(model_dir, tmp_path):
    out = tmp_path / "run"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main(["run", "--protocol", "paper", "--model", str(model_dir), "--out", str(out), "--dtype",
                         "float32", "--random", "2", "--paper-random", "3", "--max-test-items", "8", "--no-kinship",
                         "--no-progress", "--saq", str(BLEND), "--saq-max-per-country", "1",
                         "--saq-max-new-tokens", "3", *FRACTIONS])
    assert code == 0, buf.getvalue()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["protocol"] == "paper" and cfg["n_random_paper"] == 3 and cfg["format"] == "letter"
    crc = ScoreTable.load(out / "scores" / "crc.safetensors")
    # builtin templates 0-14 (first half of 30) x 4 variants per country, the paper's 8 countries
    assert sorted(crc.groups) == sorted(["China", "Indonesia", "Iran", "Mexico", "South_Korea", "Spain", "UK", "US"])
    assert crc.counts.tolist() == [15 * 4] * 8
    results = json.loads((out / "results.json").read_text())
    names = [r["eval_set"] for r in results["rows"]]
    assert "CountryRC test [random: ours, per site]" in names and "CountryRC test [random: paper's, pooled]" in names
    by_name = {r["eval_set"]: r for r in results["rows"]}
    assert len(by_name["CountryRC test [random: ours, per site]"]["random"]) == 2
    paper_rows = by_name["CountryRC test [random: paper's, pooled]"]
    assert len(paper_rows["random"]) == 3
    # the pooled sets' accuracies are those of their saved per-item records
    for i, acc in enumerate(paper_rows["random"]):
        rec = json.loads((out / "eval" / f"countryrc_test__paper_random{i}.json").read_text())
        assert acc == pytest.approx(sum(r["correct"] for r in rec["records"]) / len(rec["records"]))
    # short answers: one row per (country, language), English for every country, local for the non-English ones
    saq = {n: by_name[n] for n in names if n.startswith("BLEnD short answers")}
    assert "BLEnD short answers: Spain (es)" in saq and "BLEnD short answers: US (en)" in saq
    assert "BLEnD short answers: US (ko)" not in saq and len(saq["BLEnD short answers: Spain (es)"]["random"]) == 2
    responses = json.loads((out / "saq_responses.json").read_text())
    assert set(responses) == {"original", "general", "random0", "random1"}
    spain_es = [r for r in responses["original"] if r["group"] == "Spain" and r["language"] == "es"]
    assert saq["BLEnD short answers: Spain (es)"]["original"] == pytest.approx(
        sum(r["correct"] for r in spain_es) / len(spain_es))
    report = (out / "report.md").read_text()
    assert "- protocol: paper" in report and "Paper's random baseline: 3 sets" in report
