"""Recipes end to end on a tiny random Llama (``culnig run`` in process):

* the culture recipe (``--recipe .../culture.yaml``) gives exactly what ``culnig run`` without a recipe gives:
  every score table, every neuron set and every number of results.json;
* the language recipe on a tiny BLEnD folder written here: groups are languages, the control is the neutral frame,
  the shuffled questions' top neurons are removed (recomputed here with plain torch.topk), and the report sets
  CULNIG beside LAPE (overlap recomputed from the saved sets);
* a custom recipe built from two small files (a CSV of items with a ``persona`` column, a JSONL of held-out items).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from culnig_ext.cli import main as cli
from culnig_ext.data import FRAME_QUESTION, load_items
from culnig_ext.data.transforms import NEUTRAL_FRAME
from culnig_ext.scoring.table import ScoreTable
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.studies.recipes.load import BUILTIN_DIR
from tests.data.test_languages import english_question, local_question, write_tiny_blend
from tests.studies.test_pipeline import (ATTN_SITES, HEADS, HIDDEN, INTERMEDIATE, KV_HEADS, LAYERS, MLP_SITES,
                                         N_ATTN, N_MLP, pairs_of, top_positions)
from tests.fixtures import save_random_llama

SMALL = ["--format", "cloze", "--random", "2", "--max-test-items", "16", "--no-progress", "--n-parts", "2",
         "--n-boot", "0", "--kinship-groups", "none", "--t-mlp", "0.1", "--t-attn", "0.05", "--r-mlp", "0.05",
         "--r-attn", "0.03", "--t-specific", "0.05", "--r-specific", "0.02", "--threads", "1"]
BUILTIN = ["--data", "builtin:cultural", "--crc", "builtin:countryrc", "--crc-test", "builtin:countryrc-test"]


def save_model(path: Path, texts: list[str], seed: int = 0) -> Path:
    """A random tiny Llama (the sizes of tests/studies/test_pipeline.py) with a word tokenizer over ``texts``."""
    texts = texts + ["Question: Answer:", FRAME_QUESTION, NEUTRAL_FRAME]
    for source in ("builtin:general",):
        texts += [t for it in load_items(source, max_per_question=None) for t in (it.question, *it.choices)]
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for t in texts for w, _ in pre.pre_tokenize_str(t)} | set("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    return save_random_llama(path, tokenizer, hidden=HIDDEN, intermediate=INTERMEDIATE, layers=LAYERS, heads=HEADS,
                             kv_heads=KV_HEADS, seed=seed)


def run(argv: list[str]) -> dict:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["run", *argv, "--json"]) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


def tables(run_dir: Path) -> dict[str, ScoreTable]:
    return {p.stem: ScoreTable.load(p) for p in sorted((run_dir / "scores").glob("*.safetensors"))}


def mean(table: ScoreTable, site: str) -> torch.Tensor:
    return table[site].sum(0) / table.counts.sum().to(torch.float64)


def expected_general(neur, ctrl, surface) -> set[tuple[str, int]]:
    """The general neurons written out with plain torch: per kind the top t of neur/N - ctrl/N, minus the top r
    of the surface table's surface/N (the SMALL fractions)."""
    chosen = set()
    for sites, n, t, r in ((MLP_SITES, N_MLP, 0.1, 0.05), (ATTN_SITES, N_ATTN, 0.05, 0.03)):
        score = torch.cat([mean(neur, s) - mean(ctrl, s) for s in sites])
        top = top_positions(score, math.floor(n * t))
        removed = top_positions(torch.cat([mean(surface, s) for s in sites]), math.floor(n * r))
        names = pairs_of(sites)
        chosen |= {names[p] for p in top - removed}
    return chosen


def numbers(results: dict) -> dict:
    """What a report says, without its timings."""
    return {k: results[k] for k in ("rows", "verdict", "kinship", "layers", "n_neurons", "neuron_set", "notes")}


# ------------------------------------------------------------------------------------------------ culture
@pytest.fixture(scope="module")
def culture_model(tmp_path_factory):
    texts = [t for s in ("builtin:cultural", "builtin:countryrc", "builtin:countryrc-test")
             for it in load_items(s, max_per_question=None) for t in (it.question, *it.choices)]
    return save_model(tmp_path_factory.mktemp("culture_model"), texts)


def test_the_culture_recipe_is_todays_run(culture_model, tmp_path):
    plain = run(["--model", str(culture_model), "--out", str(tmp_path / "plain"), *BUILTIN, *SMALL])
    recipe = run(["--model", str(culture_model), "--out", str(tmp_path / "recipe"), *BUILTIN, *SMALL,
                  "--recipe", str(BUILTIN_DIR / "culture.yaml")])
    a, b = tables(tmp_path / "plain"), tables(tmp_path / "recipe")
    assert sorted(a) == sorted(b) == ["crc", "ctrl", "ctrl_parts", "neur", "neur_parts"]
    for name in a:
        assert a[name].groups == b[name].groups and torch.equal(a[name].counts, b[name].counts)
        for site in a[name].sites:
            assert torch.equal(a[name][site], b[name][site]), (name, site)
        assert a[name].metadata == b[name].metadata  # provenance, recipe hash and fingerprints included
    for path in sorted((tmp_path / "plain" / "neurons").rglob("*.json")):
        other = tmp_path / "recipe" / path.relative_to(tmp_path / "plain")
        assert NeuronSet.load(path) == NeuronSet.load(other), path.name
    ra = json.loads((tmp_path / "plain" / "results.json").read_text())
    rb = json.loads((tmp_path / "recipe" / "results.json").read_text())
    assert numbers(ra) == numbers(rb) and ra["rows"]
    assert [r["eval_set"] for r in ra["rows"]] == ["Cultural test (BLEnD-style)", "CountryRC test",
                                                    "General knowledge"]
    assert ra["metadata"]["recipe"] == rb["metadata"]["recipe"] and ra["metadata"]["recipe"].startswith("culture (")
    ca = json.loads((tmp_path / "plain" / "config.json").read_text())
    cb = json.loads((tmp_path / "recipe" / "config.json").read_text())
    assert ca["recipe_hash"] == cb["recipe_hash"] and ca["recipe"] == "culture" and cb["recipe"].endswith("culture.yaml")
    assert plain["general_neurons"] == recipe["general_neurons"]


# ----------------------------------------------------------------------------------------------- language
@pytest.fixture(scope="module")
def language_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("language")
    root = write_tiny_blend(base / "blend")
    from tests.data.test_languages import COUNTRIES, QUESTIONS, answer

    texts = [t for c in COUNTRIES for q in QUESTIONS for t in (local_question(c, q), english_question(c, q),
                                                               answer(c, q))]
    model = save_model(base / "model", texts)
    raw = yaml.safe_load((BUILTIN_DIR / "language.yaml").read_text())
    raw["target"]["sets"] = [f"language:{root}"]
    raw["evaluation"][2]["source"] = f"language-en:{root}"
    recipe = base / "language.yaml"
    recipe.write_text(yaml.safe_dump(raw, allow_unicode=True))
    out = base / "run"
    result = run(["--model", str(model), "--out", str(out), "--recipe", str(recipe), *SMALL])
    return out, result


def test_language_recipe_groups_by_language_and_filters_the_script(language_run):
    out, result = language_run
    t = tables(out)
    assert sorted(t) == ["activation", "ctrl", "ctrl_parts", "neur", "neur_parts", "shuffled"]
    assert t["neur"].groups == t["ctrl"].groups == t["shuffled"].groups == ["English", "Spanish", "Greek"]
    # 5 countries x 6 questions of the scoring topics, one item each; the shuffled set holds the same items
    assert t["neur"].counts.tolist() == [12, 12, 6] == t["shuffled"].counts.tolist() == t["ctrl"].counts.tolist()
    assert t["ctrl"].metadata["control"] == "transform:neutral"
    general = NeuronSet.load(out / "neurons" / "general.json")
    assert set(general.pairs) == expected_general(t["neur"], t["ctrl"], t["shuffled"]) and len(general)
    assert sorted(p.name for p in (out / "neurons" / "specific").glob("*.json")) == ["english.json", "greek.json",
                                                                                    "spanish.json"]
    results = json.loads((out / "results.json").read_text())
    by_set = {r["eval_set"]: r for r in results["rows"]}
    assert list(by_set) == ["Held-out questions (local language)", "General knowledge",
                            "Held-out questions in English"]
    # held-out topics: 5 x 6 local items and 3 x 6 English ones (no US/UK), each capped at 16
    assert by_set["Held-out questions (local language)"]["n_items"] == 16
    assert by_set["Held-out questions in English"]["n_items"] == 16
    assert not by_set["Held-out questions in English"]["cultural"] and by_set["General knowledge"]["cultural"] is False
    assert results["neuron_set"].startswith("language-general neurons")
    assert sorted(results["kinship"]["groups"]) == ["English", "Greek", "Spanish"]
    assert result["specific_neurons"] == {g: len(NeuronSet.load(out / "neurons" / "specific" / f"{g.lower()}.json"))
                                          for g in ("English", "Spanish", "Greek")}


def test_language_report_sets_culnig_beside_lape(language_run):
    out, _ = language_run
    side = json.loads((out / "lape" / "side_by_side.json").read_text())
    culnig = set().union(*(set(NeuronSet.load(p).pairs) for p in (out / "neurons" / "specific").glob("*.json")))
    lape_sets = {p.stem: NeuronSet.load(p) for p in (out / "lape" / "neurons").glob("*.json")}
    lape = set().union(*(set(ns.pairs) for ns in lape_sets.values()))
    total = N_MLP + N_ATTN
    assert side["overlap"]["all"] == {"a": len(culnig), "b": len(lape), "shared": len(culnig & lape),
                                      "jaccard": pytest.approx(len(culnig & lape) / len(culnig | lape)),
                                      "expected_by_chance": pytest.approx(len(culnig) * len(lape) / total)}
    assert all(".mlp." in s for s, _ in lape)  # LAPE ranks MLP neurons only
    assert sum(sum(v) for v in side["layers"]["LAPE"].values()) == len(lape)
    methods = {r["eval_set"].split(":")[0] for r in side["rows"]}
    assert methods <= {"CULNIG", "LAPE"} and side["rows"]
    assert all(r["p_holm"] is None or r["p_holm"] >= r["p_value"] for r in side["rows"])
    for m, o in side["own_vs_others"].items():
        if o is not None:
            for g, v in o["per_group"].items():
                assert v["excess"] == pytest.approx(v["own"] - v["others"])
            assert o["own_larger"] == sum(v["excess"] > 0 for v in o["per_group"].values())
    report = (out / "report.md").read_text()
    assert "CULNIG beside LAPE" in report
    sizes = side["sizes"]
    per_file = sorted(len(NeuronSet.load(p)) for p in (out / "lape" / "neurons").glob("*.json"))
    assert sorted(sizes["LAPE"].values()) == per_file and len(per_file) == 3
    found = sum(1 for n in sizes["LAPE"].values() if n)
    assert f"LAPE found neurons for {found} of 3 groups ({sum(sizes['LAPE'].values())} neurons)" in report
    assert ("finds the more group-specific neurons here" in report or "neither finds more" in report
            or "Neither method's sets are shown to be group-specific here" in report)


# ------------------------------------------------------------------------------------------ your own data
def test_a_custom_recipe_from_two_files(tmp_path):
    import csv

    personas = {"pirate": ["arr", "matey", "plank"], "poet": ["rhyme", "verse", "muse"],
                "chef": ["salt", "stew", "knife"]}
    rows, held = [], []
    for group, words in personas.items():
        for i in range(12):
            q = f"{words[i % 3]} {words[(i + 1) % 3]} number{i} ?"
            row = {"id": f"{group}{i}", "persona": group, "question": q,
                   "choices": json.dumps([words[0], words[1], "other", "none"]), "answer_idx": i % 2}
            (rows if i < 8 else held).append(row)
    with open(tmp_path / "personas.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(tmp_path / "held_out.jsonl", "w") as f:
        for r in held:
            f.write(json.dumps({"id": r["id"], "group": r["persona"], "question": r["question"],
                                "choices": json.loads(r["choices"]), "answer_idx": r["answer_idx"]}) + "\n")
    recipe = {
        "name": "persona", "target": {"sets": ["personas.csv"], "split": "all", "group_field": "persona",
                                      "groups": "persona"},
        "control": {"kind": "empty"},
        "surface": [{"name": "names", "scoring": "transform:shuffle", "top": {"mlp": 0.05, "attn": 0.03},
                     "specific": 0.02}],
        "thresholds": {"mlp": 0.1, "attn": 0.05}, "specific": {"top": 0.05, "z_min": 0.5},
        "evaluation": [{"name": "Held-out persona items", "source": "held_out.jsonl", "tag": "target"},
                       {"name": "General knowledge", "source": "builtin:general", "tag": "general"}],
        "random": {"n": 2},
    }
    (tmp_path / "persona.yaml").write_text(yaml.safe_dump(recipe))
    texts = [r["question"] for r in rows + held] + [w for ws in personas.values() for w in ws] + ["other", "none"]
    model = save_model(tmp_path / "model", texts)
    small = [a for a in SMALL]
    out = tmp_path / "run"
    result = run(["--model", str(model), "--out", str(out), "--recipe", str(tmp_path / "persona.yaml"), *small])
    t = tables(out)
    assert t["neur"].groups == ["pirate", "poet", "chef"] and t["neur"].counts.tolist() == [8, 8, 8]
    assert t["names"].counts.tolist() == [8, 8, 8]
    general = NeuronSet.load(out / "neurons" / "general.json")
    assert set(general.pairs) == expected_general(t["neur"], t["ctrl"], t["names"])
    results = json.loads((out / "results.json").read_text())
    assert [(r["eval_set"], r["n_items"], r["cultural"]) for r in results["rows"]] == [
        ("Held-out persona items", 12, True), ("General knowledge", results["rows"][1]["n_items"], False)]
    assert sorted(result["specific_neurons"]) == ["chef", "pirate", "poet"]
    assert results["neuron_set"].startswith("persona-general neurons")


def test_sweep_takes_the_language_recipe(language_run, tmp_path):
    """``culnig sweep --recipe``: the recipe's target (by language), its shuffled surface set and general set."""
    import contextlib
    import io

    out, _ = language_run
    recipe, model = out.parent / "language.yaml", out.parent / "model"
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["sweep", "--recipe", str(recipe), "--model", str(model), "--out", str(tmp_path / "s"),
                         "--format", "cloze", "--random", "1", "--normalize", "count", "--control", "empty",
                         "--contrast-general", "off", "--scale", "1", "--no-progress"]) == 0
    split = json.loads(next((tmp_path / "s").rglob("split.json")).read_text())
    assert split["scoring"] and all(i.startswith("language:") for i in split["scoring"])
    assert split["countryrc_test"] == []  # the shuffled surface set has no evaluation items
    neur = ScoreTable.load(tmp_path / "s" / "scores" / "neur.safetensors")
    assert neur.groups == ["English", "Spanish", "Greek"]
