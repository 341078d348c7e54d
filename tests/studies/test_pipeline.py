"""The whole pipeline (run_pipeline and ``culnig run``) on a tiny random Llama saved to a folder, with the builtin
data: every output file exists and parses, the neuron sets equal a recomputation from the saved score tables with
plain torch.topk, and a re-run resumes from the score tables."""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from culnig_ext.cli import main as cli
from culnig_ext.data import FRAME_QUESTION, load_items
from culnig_ext.intervention.evaluate import EvalResult
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.data.schema import MCItem
from culnig_ext.models.loading import load_model
from culnig_ext.studies.conditions import choose_format
from culnig_ext.studies.pipeline import RunConfig, run_pipeline
from culnig_ext.scoring.table import ScoreTable
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)
from tests.fixtures import save_random_llama

# The tiny model: 2 layers, hidden 32, 4 heads of 8, 2 kv heads, intermediate 48.
LAYERS, HIDDEN, HEADS, KV_HEADS, INTERMEDIATE = 2, 32, 4, 2, 48
HEAD_DIM = HIDDEN // HEADS
WIDTHS = {}
for _i in range(LAYERS):
    WIDTHS[f"layers.{_i}.mlp.gate_proj"] = INTERMEDIATE
    WIDTHS[f"layers.{_i}.self_attn.q_proj"] = HEADS * HEAD_DIM
    WIDTHS[f"layers.{_i}.self_attn.k_proj"] = KV_HEADS * HEAD_DIM
    WIDTHS[f"layers.{_i}.self_attn.v_proj"] = KV_HEADS * HEAD_DIM
MLP_SITES = [s for s in WIDTHS if ".mlp." in s]
ATTN_SITES = [s for s in WIDTHS if ".self_attn." in s]
N_MLP = LAYERS * INTERMEDIATE  # 96
N_ATTN = LAYERS * (HEADS + 2 * KV_HEADS) * HEAD_DIM  # 128
GROUPS = ["US", "UK", "South_Korea", "China", "Mexico", "Spain", "Iran", "Ethiopia"]  # builtin:cultural
EVAL_SETS = ["Cultural test (BLEnD-style)", "CountryRC test", "General knowledge"]
EVAL_SLUGS = ["cultural_test__blend-style", "countryrc_test", "general_knowledge"]
TABLES = ["neur", "ctrl", "crc", "general"]
SCORED = ["neur_parts", "ctrl_parts", "crc", "general"]  # what is scored; neur/ctrl are their sums by group
# The tiny tokenizer knows the builtin sets' words only (the default, auto, would find BLEnD in ../shared/data).
BUILTIN = dict(data="builtin:cultural", crc="builtin:countryrc", crc_test="builtin:countryrc-test")

# Fractions large enough for a tiny model to get neurons: floor(96*0.1)=9 and floor(128*0.05)=6 general neurons
# before removing floor(96*0.05)=4 / floor(128*0.03)=3 CountryRC neurons; specific: floor(224*0.05)=11, minus
# floor(224*0.02)=4.
FRACTIONS = dict(t_mlp=0.1, t_attn=0.05, r_mlp=0.05, r_attn=0.03, t_specific=0.05, r_specific=0.02, z_min=0.5)
MAX_TEST = 8


def word_tokenizer(letters: bool = True) -> PreTrainedTokenizerFast:
    """One token per word or punctuation run of the builtin data (and the prompt frames); with ``letters`` also the
    single letters A-Z, so that the letter format's answers are tokens (without: B, C, D are unknown words).

    Whole words, not bytes: with a random model every token has P ~ 1/vocab, and a CountryRC answer spelled in ~20
    byte tokens would have P(y|x) below float32's range, so its P-weighted scores would all be exactly 0.
    """
    texts = ["Question: Answer:", FRAME_QUESTION]
    for source in ("builtin:cultural", "builtin:general", "builtin:countryrc", "builtin:countryrc-test"):
        for item in load_items(source, max_per_question=None):
            texts += [item.question, *item.choices]
    pre = pre_tokenizers.Whitespace()
    words = {word for text in texts for word, _ in pre.pre_tokenize_str(text)}
    words = sorted(words | set("ABCDEFGHIJKLMNOPQRSTUVWXYZ")) if letters else sorted(words - set("BCD"))
    vocab = {token: i for i, token in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def save_tiny_model(path: Path, seed: int = 0, letters: bool = True) -> Path:
    """A random tiny Llama with the word tokenizer's vocabulary, saved with the tokenizer into ``path``."""
    tokenizer = word_tokenizer(letters)
    return save_random_llama(path, tokenizer, hidden=HIDDEN, intermediate=INTERMEDIATE, layers=LAYERS, heads=HEADS,
                             kv_heads=KV_HEADS, seed=seed)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_llama"))


def run_captured(cfg: RunConfig):
    """Run, returning the result and the text logged to the ``culnig`` logger; the library prints nothing."""
    out, logged = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(logged)
    logger = logging.getLogger("culnig")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(out):
            result = run_pipeline(cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert out.getvalue() == ""
    return result, logged.getvalue()


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory):
    cfg = RunConfig(out=str(tmp_path_factory.mktemp("run") / "r"), model=str(model_dir), format="cloze", n_random=2,
                    **BUILTIN,
                    max_test_items=MAX_TEST, progress=False, contrast_general=True, **FRACTIONS)
    result, printed = run_captured(cfg)
    return cfg, result, printed


# ---------------------------------------------------------------------------------- the recomputation
def mean_over_items(table: ScoreTable, site: str) -> torch.Tensor:
    """Group-summed scores divided by the table's whole item count: Tensor[N] float64."""
    return table[site].sum(0) / table.counts.sum().to(torch.float64)


def pairs_of(sites: list[str]) -> list[tuple[str, int]]:
    return [(s, i) for s in sites for i in range(WIDTHS[s])]


def top_positions(scores: torch.Tensor, k: int) -> set[int]:
    values, positions = torch.topk(scores, k)
    if k < scores.numel():  # no tie at the cut, so that the top k is one set whatever the tie rule
        assert values[-1] > torch.topk(scores, k + 1).values[-1]
    return set(positions.tolist())


def expected_general(tables: dict[str, ScoreTable]) -> dict[tuple[str, int], float]:
    """{(site, index): contrast score} of the culture-general neurons, written out with plain torch."""
    chosen = {}
    for sites, n, t, r in ((MLP_SITES, N_MLP, FRACTIONS["t_mlp"], FRACTIONS["r_mlp"]),
                           (ATTN_SITES, N_ATTN, FRACTIONS["t_attn"], FRACTIONS["r_attn"])):
        score = torch.cat([mean_over_items(tables["neur"], s) - mean_over_items(tables["ctrl"], s)
                           - mean_over_items(tables["general"], s) for s in sites])
        crc = torch.cat([mean_over_items(tables["crc"], s) for s in sites])
        assert score.numel() == n
        top = top_positions(score, math.floor(n * t))
        removed = top_positions(crc, math.floor(n * r))
        names = pairs_of(sites)
        chosen.update({names[p]: float(score[p]) for p in top - removed})
    return chosen


def expected_specific(tables: dict[str, ScoreTable], group: str) -> dict[tuple[str, int], float]:
    """Culture-specific neurons of ``group``: top t of S[group] (all sites pooled) minus the top r of the group's
    CountryRC scores, keeping z >= z_min; S[g] = neur[g]/N_neur - ctrl[g]/N_ctrl with N the tables' item counts."""
    neur, ctrl, crc = tables["neur"], tables["ctrl"], tables["crc"]
    sites = list(WIDTHS)
    ctrl_rows = [ctrl.groups.index(g) for g in neur.groups]
    s_all = torch.cat([neur[s] / neur.counts.sum() - ctrl[s][ctrl_rows] / ctrl.counts.sum() for s in sites], dim=1)
    n = s_all.shape[1]
    assert n == N_MLP + N_ATTN
    row = neur.groups.index(group)
    crc_row = torch.cat([crc[s][crc.groups.index(group)] / crc.counts.sum() for s in sites])
    top = top_positions(s_all[row], math.floor(n * FRACTIONS["t_specific"]))
    removed = top_positions(crc_row, math.floor(n * FRACTIONS["r_specific"]))
    z = (s_all[row] - s_all.mean(0)) / s_all.std(0, correction=0)
    names = pairs_of(sites)
    kept = {}
    for p in top - removed:
        assert abs(float(z[p]) - FRACTIONS["z_min"]) > 1e-9  # not on the threshold
        if z[p] >= FRACTIONS["z_min"]:
            kept[names[p]] = float(s_all[row, p])
    return kept


def as_dict(ns: NeuronSet) -> dict[tuple[str, int], float]:
    return {(n.site, n.index): n.score for n in ns}


def assert_same_neurons(got: NeuronSet, want: dict[tuple[str, int], float], *, rel=1e-9, abs=1e-15) -> None:
    """The set holds exactly the expected neurons, each with its expected score."""
    got_d = as_dict(got)
    assert set(got_d) == set(want)
    for key, value in want.items():
        assert got_d[key] == pytest.approx(value, rel=rel, abs=abs), key


def load_tables(run_dir: Path) -> dict[str, ScoreTable]:
    return {name: ScoreTable.load(run_dir / "scores" / f"{name}.safetensors") for name in TABLES}


# ------------------------------------------------------------------------------------------------- tests
def test_run_writes_every_file(run, model_dir):
    cfg, result, printed = run
    run_dir = Path(cfg.out)
    assert result.run_dir == run_dir and result.format == "cloze"
    assert result.report == run_dir / "report.md"
    config = json.loads((run_dir / "config.json").read_text())
    hashes = {k: config.pop(k) for k in ("recipe_hash", "recipe_scoring_hash")}  # the recipe's (test_recipes.py)
    assert hashes["recipe_hash"].startswith("sha256:") and len(hashes["recipe_hash"]) == 23
    assert sorted(hashes["recipe_scoring_hash"]) == ["crc", "ctrl", "neur"]
    assert config == json.loads(json.dumps(asdict(cfg)))
    assert config["model"] == str(model_dir) and config["t_mlp"] == 0.1 and config["recipe"] == "culture"

    # Score tables: the builtin data's items (72 scoring items split off by topic, 120 CountryRC scoring items for
    # these countries, half of the 64 non-cultural items), the model's widths, and the clamp of control sets.
    neur_items = load_items("builtin:cultural", split="neur")
    per_group = [sum(it.group == g for it in neur_items) for g in GROUPS]
    tables = load_tables(run_dir)
    expected_items = {"neur": 72, "ctrl": 72, "crc": 120, "general": 32}
    expected_clamp = {"neur": "", "ctrl": "0.0", "crc": "", "general": "0.0"}
    for name, table in tables.items():
        assert table.num_items == expected_items[name], name
        assert {s: table[s].shape[1] for s in table.sites} == WIDTHS
        assert table.metadata["model"] == str(model_dir)
        assert table.metadata["clamp_min"] == expected_clamp[name]
    assert tables["neur"].groups == GROUPS and tables["neur"].counts.tolist() == per_group
    assert tables["ctrl"].counts.tolist() == per_group
    assert sorted(tables["crc"].groups) == sorted(GROUPS)

    general = NeuronSet.load(run_dir / "neurons" / "general.json")
    assert general == result.general
    # Provenance names the score files on disk (a fresh run and a resumed one must agree).
    fingerprints = {name: table.fingerprint() for name, table in tables.items()}
    assert general.sources == {"neur": fingerprints["neur"], "ctrl": fingerprints["ctrl"],
                               "crc": fingerprints["crc"], "contrast": fingerprints["general"]}
    assert result.specific["US"].sources == {k: fingerprints[k] for k in ("neur", "ctrl", "crc")}
    for group in GROUPS:
        assert NeuronSet.load(run_dir / "neurons" / "specific" / f"{group.lower()}.json") == result.specific[group]
    assert sorted(p.name for p in (run_dir / "neurons" / "specific").iterdir()) == sorted(
        f"{g.lower()}.json" for g in GROUPS)

    conditions = ["original", "general", "random0", "random1"]
    assert sorted(p.name for p in (run_dir / "eval").iterdir()) == sorted(
        f"{s}__{c}.json" for s in EVAL_SLUGS for c in conditions)
    evals = {(s, c): EvalResult.load(run_dir / "eval" / f"{s}__{c}.json") for s in EVAL_SLUGS for c in conditions}
    for (slug, cond), res in evals.items():
        assert len(res.records) == MAX_TEST and res.format == "cloze", (slug, cond)

    results = json.loads((run_dir / "results.json").read_text())
    assert results["format"] == "culnig-report/1"
    assert results["n_neurons"] == len(general)
    assert [row["eval_set"] for row in results["rows"]] == EVAL_SETS
    report = (run_dir / "report.md").read_text()
    for row, slug in zip(results["rows"], EVAL_SLUGS):
        original, inhibited = evals[slug, "original"].accuracy, evals[slug, "general"].accuracy
        randoms = [evals[slug, "random0"].accuracy, evals[slug, "random1"].accuracy]
        assert (row["original"], row["inhibited"], row["random"]) == (original, inhibited, randoms)
        assert row["n_items"] == MAX_TEST
        assert row["cultural"] == (slug != "general_knowledge")
        name = row["eval_set"] + ("" if row["cultural"] else " (non-cultural)")
        line = f"| {name} | accuracy | {MAX_TEST} | {100 * original:.2f} | {100 * inhibited:.2f} | "
        assert line in report
    layer_counts = {"mlp": [0] * LAYERS, "attn": [0] * LAYERS}
    for n in general:
        layer = int(n.site.split(".")[1])
        layer_counts["mlp" if ".mlp." in n.site else "attn"][layer] += 1
    assert results["layers"] == {"num_layers": LAYERS, "counts": layer_counts}

    # Kinship only over non-empty specific sets; this seed gives some.
    nonempty = [g for g in GROUPS if len(result.specific[g])]
    assert nonempty
    assert results["kinship"]["targets"] == nonempty
    for png in ("kinship.png", "layers.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    summary = (run_dir / "summary.md").read_text()
    assert f"Culture-general neurons: {len(general)}" in summary
    for layer in range(LAYERS):
        assert f"| {layer} | {layer_counts['mlp'][layer]} | {layer_counts['attn'][layer]} |" in summary
    for group in GROUPS:
        by_kind = result.specific[group].counts_by_kind()
        assert f"| {group} | {by_kind['mlp']} | {by_kind['attn']} | {len(result.specific[group])} |" in summary
    # Instance view: one row per top neuron (by score), each with a share in [0, 100] %.
    assert "## Instance view" in summary
    rows = [line for line in summary.splitlines() if line.startswith("| layers.")]
    top = sorted(general, key=lambda n: -n.score)[:15]
    assert [r.split(" | ")[0][2:] for r in rows] == [f"{n.site}[{n.index}]" for n in top]
    shares = [float(r.rstrip(" |").rsplit("| ", 1)[1].rstrip("%")) for r in rows]
    assert all(0.0 <= x <= 100.0 for x in shares)
    for what in ("culture items", "control items (empty)", "CountryRC items", "general-ability contrast items"):
        assert f"{what}: scoring" in printed


def test_instance_view_file_and_page(run):
    """instance.json: for every culture-general neuron its highest item scores (highest first, at most 10) on the
    run's scoring items, with their question texts; report.html beside report.md."""
    cfg, result, _ = run
    out = Path(cfg.out)
    inst = json.loads((out / "instance.json").read_text(encoding="utf-8"))
    assert set(inst["neurons"]) == {f"{n.site}:{n.index}" for n in result.general}
    questions = {it.id: it.question for it in load_items(BUILTIN["data"], max_per_question=None)}
    for entry in inst["neurons"].values():
        values = [v for _, v in entry["top"]]
        assert values == sorted(values, reverse=True) and len(values) == min(10, inst["n_items"])
        assert 0.0 <= entry["positive_share"] <= 1.0
    for item in inst["items"]:
        assert questions[item["id"]] == item["question"]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "id='culnig-data'" in page


def test_general_neurons_equal_a_recomputation(run):
    cfg, result, _ = run
    tables = load_tables(Path(cfg.out))
    want = expected_general(tables)
    assert_same_neurons(NeuronSet.load(Path(cfg.out) / "neurons" / "general.json"), want)
    # The counts: floor(n * t) per kind minus the CountryRC neurons among them.
    by_kind = result.general.counts_by_kind()
    assert by_kind["mlp"] <= 9 and by_kind["attn"] <= 6
    assert by_kind["mlp"] == sum(1 for site, _ in want if ".mlp." in site)
    assert 0 < len(result.general) == len(want)


def test_specific_neurons_equal_a_recomputation(run):
    cfg, result, _ = run
    tables = load_tables(Path(cfg.out))
    for group in GROUPS:
        want = expected_specific(tables, group)
        assert_same_neurons(NeuronSet.load(Path(cfg.out) / "neurons" / "specific" / f"{group.lower()}.json"), want)
        assert len(want) <= 11


def test_rerun_reuses_the_score_tables(run):
    cfg, first, _ = run
    run_dir = Path(cfg.out)
    files = [run_dir / "scores" / f"{name}.safetensors" for name in SCORED]
    before = {f: f.stat().st_mtime_ns for f in files}
    second, printed = run_captured(cfg)
    for f in files:
        assert f"reusing {f}" in printed
        assert f.stat().st_mtime_ns == before[f], f
    assert ": scoring" not in printed
    assert second.general == first.general and second.specific == first.specific

    # Another control prompt changes the control items only: that table alone is scored again.
    other = RunConfig(**{**asdict(cfg), "control": "frame"})
    _, printed = run_captured(other)
    assert "control items (frame): scoring 72 items" in printed
    assert files[1].stat().st_mtime_ns != before[files[1]]
    for f in (files[0], files[2], files[3]):
        assert f"reusing {f}" in printed and f.stat().st_mtime_ns == before[f]
    assert ScoreTable.load(files[1]).metadata["clamp_min"] == "0.0"


def test_cli_run_and_resume(model_dir, tmp_path, capsys):
    out = tmp_path / "cli_run"
    argv = ["run", "--out", str(out), "--model", str(model_dir), "--format", "cloze", "--random", "2",
            "--max-test-items", "5", "--no-progress", "--contrast-general", "--seed", "3", "--data", BUILTIN["data"],
            "--crc", BUILTIN["crc"], "--crc-test", BUILTIN["crc_test"]]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert f"Outputs in {out}/" in printed and f"report     {out / 'report.md'}" in printed
    assert "[culnig] culture items: scoring" in captured.err and "scoring" not in printed  # messages on stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["n_random"], config["max_test_items"], config["seed"], config["format"]) == (2, 5, 3, "cloze")
    assert config["contrast_general"] is True and config["progress"] is False
    # With the paper's fractions a tiny model has no neurons: floor(96 * 0.01) = floor(128 * 0.002) = 0, and
    # floor(224 * 0.003) = 0 per group. Inhibiting nothing leaves every accuracy as it was.
    assert len(NeuronSet.load(out / "neurons" / "general.json")) == 0
    for group in GROUPS:
        assert len(NeuronSet.load(out / "neurons" / "specific" / f"{group.lower()}.json")) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n_neurons"] == 0 and results["kinship"] is None
    assert not (out / "kinship.png").exists()
    assert [row["eval_set"] for row in results["rows"]] == EVAL_SETS
    for row in results["rows"]:
        assert row["n_items"] == 5
        assert row["inhibited"] == row["original"] and row["random"] == [row["original"]] * 2
    assert "report.md" in {p.name for p in out.iterdir()}

    assert sorted(f.name for f in (out / "scores").iterdir()) == sorted(
        f"{name}.safetensors" for name in set(TABLES) | set(SCORED))
    files = [out / "scores" / f"{name}.safetensors" for name in SCORED]
    before = {f: f.stat().st_mtime_ns for f in files}
    assert cli.main(argv) == 0
    logged = capsys.readouterr().err
    for f in files:
        assert f"reusing {f}" in logged and f.stat().st_mtime_ns == before[f]

    # The config.json a run writes repeats it: the same options, so every table is reused; --json on stdout.
    report = (out / "report.md").read_text()
    assert cli.main(["run", "--config", str(out / "config.json"), "--json", "--log-level", "warning"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["ok"] and summary["command"] == "run" and summary["config"] == config
    assert summary["run_dir"] == str(out) and summary["general_neurons"] == 0 and summary["format"] == "cloze"
    assert captured.err == ""  # --log-level warning: the info messages are not shown
    assert json.loads((out / "config.json").read_text()) == config
    def untimed(text):  # the report's run-time lines (seconds, time_*) differ between any two runs
        return [line for line in text.splitlines() if not line.startswith(("- seconds:", "- time_"))]

    assert untimed((out / "report.md").read_text()) == untimed(report)
    for f in files:
        assert f.stat().st_mtime_ns == before[f]


# ------------------------------------------------------------------------------------------- format="auto"
def items_with_gold(answer_idx: int, n: int = 12) -> list[MCItem]:
    return [MCItem(id=f"q{i}", group="US", question=f"Which dish is number {i}?",
                   choices=("Hamburger", "Tacos", "Paella", "Pancakes"), answer_idx=answer_idx) for i in range(n)]


def answering_a(model_dir):
    """The tiny model made to answer "A" to every letter prompt: with the attention and MLP outputs zeroed the last
    hidden state is that of the prompt's last token (always the answer prefix), and lm_head's row of "A" points
    along it."""
    model, tokenizer = load_model(str(model_dir))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        ids = torch.tensor([tokenizer(' {"answer_choice":"')["input_ids"]])
        hidden = model.model(ids).last_hidden_state[0, -1]
        model.lm_head.weight[tokenizer.convert_tokens_to_ids("A")] = 100.0 * hidden
    return model, tokenizer


def test_choose_format_by_letter_accuracy(model_dir):
    model, tokenizer = answering_a(model_dir)
    # Always right against chance 1/4: each item adds log(0.45/0.25) = 0.588 to the sequential test's
    # log-likelihood ratio, which reaches log(0.95/0.05) = 2.944 at the 6th item -> letter, after 6 of the 12.
    fmt, why = choose_format(model, tokenizer, items_with_gold(0), batch_size=5, progress=False)
    assert fmt == "letter"
    assert "6/6 = 100.0% vs chance 25.0%" in why and why.endswith("using the letter format")
    # Always wrong: each item adds log(0.55/0.75) = -0.310; -2.944 is reached at the 10th -> cloze.
    fmt, why = choose_format(model, tokenizer, items_with_gold(2), batch_size=5, progress=False)
    assert fmt == "cloze" and "0/10 = 0.0%" in why


def test_choose_format_falls_back_to_cloze_without_letter_tokens(tmp_path):
    folder = save_tiny_model(tmp_path / "m", letters=False)
    model, tokenizer = load_model(str(folder))
    fmt, why = choose_format(model, tokenizer, items_with_gold(0, n=3), batch_size=4, progress=False)
    assert fmt == "cloze"
    assert why.startswith("the tokenizer cannot encode the letter format") and "answer letters share token ids" in why


def test_report_states_intervals_power_holm_stability_and_verdict(run):
    cfg, result, printed = run
    out = Path(cfg.out)
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    ps = [r["p_value"] for r in rows]
    # Holm by hand over the report's rows
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    want, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        want[i] = running
    assert [r["p_holm"] for r in rows] == pytest.approx(want)
    for r in rows:
        diff = r["inhibited"] - sum(r["random"]) / len(r["random"])
        assert r["diff_low"] <= diff + 1e-12 and diff - 1e-12 <= r["diff_high"] and r["mde"] >= 0
    assert results["verdict"]["label"] in ("culture-specific", "not specific", "inconclusive")
    assert set(results["verdict"]["per_set"]) == {r["eval_set"] for r in rows}
    md = (out / "report.md").read_text()
    assert "## Specificity verdict" in md and "## Stability of the culture-general neurons" in md
    stab = next(s for s in results["sections"] if s["title"].startswith("Stability"))["markdown"]
    line = next(l for l in stab.splitlines() if l.startswith("| all neurons |"))
    assert int(line.split("|")[2]) == len(result.general)
    assert "Data: " not in " ".join(results["notes"])  # explicit builtin sources: nothing was resolved
