"""``--format auto``'s sequential test: it stops early on a tiny model set up clearly above chance and on one set up at
chance, and its decisions equal a sequential probability ratio test written out here."""
from __future__ import annotations

import math

import pytest

from culnig_ext.data.schema import MCItem
from culnig_ext.studies.format_probe import MAX_ITEMS, probe_format, sprt
from tests.studies.test_pipeline import answering_a, one_thread, save_tiny_model  # noqa: F401 (fixture)

CHOICES = ("Hamburger", "Tacos", "Paella", "Pancakes")


@pytest.fixture(scope="module")
def model_a(tmp_path_factory):
    return answering_a(save_tiny_model(tmp_path_factory.mktemp("probe_model")))


def items(golds: list[int]) -> list[MCItem]:
    return [MCItem(id=f"q{i}", group="US", question=f"Which dish is number {i}?", choices=CHOICES, answer_idx=g)
            for i, g in enumerate(golds)]


def reference_stop(outcomes: list[bool], p0: float = 0.25, p1: float = 0.45, alpha: float = 0.05,
                   beta: float = 0.05) -> tuple[int, str | None]:
    """Wald's SPRT for a Bernoulli p0 against p1, written out: (items seen, decision)."""
    upper, lower = math.log((1 - beta) / alpha), math.log(beta / (1 - alpha))
    total = 0.0
    for n, right in enumerate(outcomes, 1):
        total += math.log(p1 / p0) if right else math.log((1 - p1) / (1 - p0))
        if total >= upper:
            return n, "letter"
        if total <= lower:
            return n, "cloze"
    return len(outcomes), None


def test_stops_early_on_a_model_clearly_above_chance(model_a):
    model, tokenizer = model_a
    probe = probe_format(model, tokenizer, items([0] * 100), batch_size=8)
    # Always right: 0.588 per item, log(19) = 2.944 reached at ceil(2.944 / 0.588) = 6 items.
    assert (probe.format, probe.items, probe.hits, probe.stopped) == ("letter", 6, 6, "above chance")
    assert probe.items == reference_stop([True] * 100)[0]
    assert probe.chance == pytest.approx(0.25) and probe.llr == pytest.approx(6 * math.log(0.45 / 0.25))


def test_stops_early_on_a_model_at_chance(model_a):
    model, tokenizer = model_a
    golds = [i % 4 for i in range(100)]  # the model always answers A: right on a quarter of the items
    probe = probe_format(model, tokenizer, items(golds), batch_size=8, seed=3)
    by_id = {f"q{i}": g for i, g in enumerate(golds)}
    seen = [by_id[i] == 0 for i in probe.ids]  # what an always-A model gets right, in the order it was asked
    assert len(set(probe.ids)) == len(probe.ids) == probe.items
    assert reference_stop(seen) == (probe.items, "cloze")
    assert probe.format == "cloze" and probe.stopped == "at chance"
    assert probe.items < MAX_ITEMS  # decided before the cap
    assert probe.hits == sum(seen)


def test_the_cap_decides_by_the_binomial_test(model_a):
    model, tokenizer = model_a
    # Right on 1 item in 3 (chance 1/4): the test wanders, so the cap of 12 items is reached undecided.
    golds = [0 if i % 3 == 0 else 1 for i in range(30)]
    probe = probe_format(model, tokenizer, items(golds), batch_size=4, max_items=12)
    by_id = {f"q{i}": g for i, g in enumerate(golds)}
    assert probe.items == 12 and probe.stopped == "at the cap"
    assert reference_stop([by_id[i] == 0 for i in probe.ids]) == (12, None)
    from scipy.stats import binom

    p = binom.sf(probe.hits - 1, 12, 0.25)  # P(X >= hits), X ~ Binomial(12, 1/4)
    assert probe.p_value == pytest.approx(p)
    assert probe.format == ("letter" if p < 0.05 else "cloze")


def test_sprt_uses_each_items_own_chance():
    # Two options: chance 1/2, alternative 0.7: right adds log(0.7/0.5), wrong log(0.3/0.5).
    state = sprt([True, False, True], [2, 2, 2])
    assert state.llr == pytest.approx(2 * math.log(0.7 / 0.5) + math.log(0.3 / 0.5))
    assert (state.items, state.hits, state.decision) == (3, 2, None) and state.chance == pytest.approx(0.5)
    with pytest.raises(ValueError, match="item 0 has 1 option"):
        sprt([True], [1])


def test_the_run_records_the_evidence_in_config_and_report(model_dir_auto):
    config, results = model_dir_auto
    probe = config["format_probe"]
    assert config["format"] == probe["format"] and probe["items"] <= MAX_ITEMS
    assert probe["stopped"] in ("above chance", "at chance", "at the cap", "tokenizer")
    assert results["metadata"]["format_probe"].startswith(f"{probe['hits']}/{probe['items']} letter-format items")
    assert any(note.startswith("Format chosen automatically: letter-format accuracy") for note in results["notes"])


@pytest.fixture(scope="module")
def model_dir_auto(tmp_path_factory):
    """A tiny-model run with --format auto through the CLI; returns its config.json and results.json."""
    import json

    from culnig_ext.cli import main as cli
    from tests.studies.test_pipeline import BUILTIN

    model_dir = save_tiny_model(tmp_path_factory.mktemp("auto_model"))
    out = tmp_path_factory.mktemp("auto_run") / "r"
    argv = ["run", "--out", str(out), "--model", str(model_dir), "--random", "1", "--max-test-items", "4",
            "--max-scoring-items", "16", "--no-progress", "--no-kinship", "--no-instance-view", "--data",
            BUILTIN["data"], "--crc", BUILTIN["crc"], "--crc-test", BUILTIN["crc_test"], "--general", "none"]
    assert cli.main(argv) == 0
    return json.loads((out / "config.json").read_text()), json.loads((out / "results.json").read_text())


def test_a_repeat_from_config_json_skips_the_test(model_dir_auto):
    from culnig_ext.studies.config import RunConfig
    from culnig_ext.studies.options import check_options

    config, _ = model_dir_auto
    checked = check_options(config, RunConfig, "config.json")  # the record is skipped, the options kept
    assert "format_probe" not in checked and checked["format"] in ("letter", "cloze")
    assert RunConfig(**checked).format == config["format"]
