"""culnig sweep: the choice rule by hand, and split discipline (no test item is evaluated before the choice)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from culnig_ext.cli import main as cli
from culnig_ext.studies import sweep
from culnig_ext.data import load_items
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.studies.sweep import CULTURAL_VAL, GENERAL_VAL, Setting, SweepConfig, choose, validation_split
from tests.studies.test_pipeline import BUILTIN, save_tiny_model


def test_choice_rule_by_hand():
    settings = [Setting("count", "empty", False, 1.0), Setting("prob", "frame", True, 1.0),
                Setting("prob", "empty", False, 2.0), Setting("count", "frame", True, 2.0)]
    # (cultural val acc, non-cultural val acc) with each setting's neurons; originals 0.5 and 0.8
    acc = {None: (0.5, 0.8), 0: (0.4, 0.8), 1: (0.3, 0.6), 2: (0.25, 0.4), 3: (0.4, 0.8)}
    # gaps: 0: 0.2 - 0 = 0.2; 1: 0.4 - 0.25 = 0.15; 2: 0.5 - 0.5 = 0; 3: 0.2 (ties with 0: the first wins)
    sets = {i: NeuronSet([], method="general", params={"i": i}) for i in range(4)}

    def identify(s):
        return sets[settings.index(s)]

    def evaluate_val(name, neurons):
        key = None if neurons is None else neurons.params["i"]
        return SimpleNamespace(accuracy=acc[key][0 if name == CULTURAL_VAL else 1])

    chosen, rows = choose(settings, identify, evaluate_val)
    assert chosen == settings[0]
    assert [round(r.gap, 12) for r in rows] == [0.2, 0.15, 0.0, 0.2]
    acc[1] = (0.1, 0.8)  # gap 0.8
    assert choose(settings, identify, evaluate_val)[0] == settings[1]


def test_validation_split_keeps_questions_together():
    items = load_items("builtin:cultural", split="test", max_per_question=None)
    val, test = validation_split(items, seed=0)
    assert len(val) + len(test) == len(items) and val and test
    assert not {(i.group, i.question_id) for i in val} & {(i.group, i.question_id) for i in test}
    assert validation_split(items, seed=0) == (val, test) and validation_split(items, seed=1) != (val, test)


def test_sweep_never_reads_the_test_split_while_choosing(tmp_path, monkeypatch):
    model_dir = save_tiny_model(tmp_path / "tiny")
    log: list = []
    real_evaluate, real_choose = sweep.evaluate_items, sweep.choose

    def spy_evaluate(model, tokenizer, items, neurons, **kw):
        log.append(("eval", frozenset(it.id for it in items), None if neurons is None else neurons))
        return real_evaluate(model, tokenizer, items, neurons, **kw)

    def spy_choose(*args, **kw):
        out = real_choose(*args, **kw)
        log.append(("chosen", out[0], None))
        return out

    monkeypatch.setattr(sweep, "evaluate_items", spy_evaluate)
    monkeypatch.setattr(sweep, "choose", spy_choose)
    out = tmp_path / "sweep"
    argv = ["sweep", "--out", str(out), "--model", str(model_dir), "--random", "2", "--no-progress",
            "--data", BUILTIN["data"], "--crc", BUILTIN["crc"], "--crc-test", BUILTIN["crc_test"],
            "--scale", "10,20", "--control", "empty,frame", "--normalize", "count", "--contrast-general", "off,on",
            "--max-test-items", "12", "--max-val-items", "12"]
    assert cli.main(argv) == 0
    split = {k: set(v) for k, v in json.loads((out / "split.json").read_text()).items()}
    val = split["validation"] | split["general_validation"]
    test = split["test"] | split["general_test"] | split["countryrc_test"]
    assert val and test and not val & test and not (val | test) & split["scoring"]
    marker = next(i for i, entry in enumerate(log) if entry[0] == "chosen")
    before, after = log[:marker], log[marker + 1 :]
    # while choosing: only validation items (original + 8 settings, 2 sets each)
    assert len(before) == 2 * (1 + 8)
    assert all(ids <= val for _, ids, _ in before)
    # after: only test items, 3 sets x (original, chosen, 2 random), and the neurons are the chosen setting's
    assert len(after) == 3 * 4 and all(ids <= test for _, ids, _ in after)
    chosen_set = NeuronSet.load(out / "neurons" / "chosen.json")
    used = [ns for _, _, ns in after if ns is not None and ns.method != "random"]
    assert used and all(ns == chosen_set for ns in used)
    results = json.loads((out / "results.json").read_text())
    assert [r["eval_set"] for r in results["rows"]] == ["Cultural test (BLEnD-style)", "CountryRC test",
                                                      "General knowledge"]
    assert results["metadata"]["chosen"] == log[marker][1].name
    assert results["verdict"]["label"] in ("culture-specific", "not specific", "inconclusive")
    md = (out / "report.md").read_text()
    assert "Appendix: the whole grid on the validation split" in md and md.count("| normalize=count") == 8
