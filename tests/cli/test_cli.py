"""The ``culnig`` command (``culnig_ext.cli.main``): return codes, one-line reasons for bad input, and the files the
subcommands write, checked against expectations built here (score tables whose top neurons are known by
construction, a hand-written results.json)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from culnig_ext.cli import main as cli
from culnig_ext.intervention.evaluate import EvalResult
from culnig_ext.selection.neurons import Neuron, NeuronSet
from culnig_ext.scoring.table import ScoreTable
from tests.studies.test_pipeline import WIDTHS as TINY_WIDTHS
from tests.studies.test_pipeline import assert_same_neurons, save_tiny_model
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)


def error_line(capsys, command: str) -> str:
    """The single stderr line of a failed command (``culnig <command>: error: ...``)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"culnig {command}: error: ")
    return err[0]


def write_items(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD_ITEMS = [
    {"id": "a1", "group": "A", "question": "Which food is eaten in the United States?",
     "choices": ["Hamburger", "Tacos", "Sunday roast"], "answer_idx": 0},
    {"id": "a2", "group": "A", "question": "What is a traditional breakfast?", "choices": ["Pancakes", "Firfir"],
     "answer_idx": 0},
    {"id": "b1", "group": "B", "question": "Which dish is from Spain?", "choices": ["Paella", "Peking duck"],
     "answer_idx": 0},
    {"id": "b2", "group": "B", "question": "Which sport is popular in Spain?", "choices": ["Cricket", "Football"],
     "answer_idx": 1},
]


# ------------------------------------------------------------------------------------------------- usage
def test_no_command_prints_help_and_returns_2(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: culnig")
    for command in ("score", "identify", "evaluate", "report", "run"):
        assert command in out


MODEL_OPTIONS = ["--model", "--dtype", "--device", "--batch-size", "--no-progress", "--format"]
HELP_OPTIONS = {
    ("score",): MODEL_OPTIONS + ["--data", "--split", "--control", "--clamp-min", "--seed", "--out"],
    ("identify", "general"): ["--neur", "--ctrl", "--crc", "--normalize", "--out", "--contrast", "--t-mlp",
                              "--t-attn", "--r-mlp", "--r-attn"],
    ("identify", "specific"): ["--neur", "--ctrl", "--crc", "--normalize", "--out", "--group", "--all-groups", "--t",
                               "--r", "--z-min"],
    ("evaluate",): MODEL_OPTIONS + ["--data", "--split", "--inhibit", "--random", "--restrict-to-choices", "--seed",
                                    "--out"],
    ("report",): ["run_dir"],
    ("run",): ["--out", "--model", "--data", "--crc", "--crc-test", "--general", "--format", "--control",
               "--normalize", "--contrast-general", "--random", "--no-kinship", "--max-test-items",
               "--max-scoring-items", "--n-boot", "--no-instance-view", "--batch-size",
               "--dtype", "--device", "--seed", "--no-progress"],
    ("sweep",): ["--out", "--model", "--data", "--crc", "--crc-test", "--general", "--format", "--normalize",
                 "--control", "--contrast-general", "--scale", "--random", "--max-scoring-items", "--max-val-items",
                 "--max-test-items", "--batch-size", "--dtype", "--device", "--seed", "--no-progress"],

    ("compare",): ["--out", "--model", "--data", "--crc", "--format", "--control", "--t-specific", "--r-specific",
                   "--z-min", "--top-rate", "--filter-rate", "--activation-bar-ratio", "--random", "--max-items",
                   "--max-test-items", "--batch-size", "--dtype", "--device", "--seed", "--no-progress"],
    (): ["score", "identify", "evaluate", "report", "run", "sweep", "compare", "--version"],
}


@pytest.mark.parametrize("command", list(HELP_OPTIONS), ids=lambda c: " ".join(c) or "culnig")
def test_help_exits_0_and_mentions_every_option(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: culnig")
    for option in HELP_OPTIONS[command]:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", out), f"{option} not in help of {command}"


def test_identify_without_general_or_specific(tmp_path, capsys):
    table = general_tables()[0]
    table.save(tmp_path / "n.safetensors")
    assert cli.main(["identify"]) == 1
    assert "say which: 'culnig identify general ...' or 'culnig identify specific ...'" in error_line(capsys, "identify")


def test_json_output_and_log_level_on_every_command(tmp_path, capsys):
    """--json puts one JSON object on stdout (also for a failure, beside the error line on stderr)."""
    missing = tmp_path / "nowhere" / "items.jsonl"
    assert cli.main(["score", "--data", str(missing), "--out", str(tmp_path / "t.safetensors"), "--json"]) == 1
    captured = capsys.readouterr()
    answer = json.loads(captured.out)
    assert answer["ok"] is False and answer["command"] == "score" and str(missing) in answer["error"]
    assert answer["error"] == captured.err.strip()
    with pytest.raises(SystemExit):
        cli.main(["report", str(tmp_path), "--log-level", "loud"])
    assert "invalid choice: 'loud'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_data_file(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "items.jsonl"
    assert cli.main(["score", "--data", str(missing), "--out", str(tmp_path / "t.safetensors")]) == 1
    assert str(missing) in error_line(capsys, "score")
    assert cli.main(["evaluate", "--data", str(missing), "--out", str(tmp_path / "ev")]) == 1
    assert str(missing) in error_line(capsys, "evaluate")
    assert not (tmp_path / "t.safetensors").exists()


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"answer_idx": 5}, "answer_idx"),
        ({"choices": ["only one"]}, "choices"),
        ({"choises": ["x", "y"]}, "choises"),
    ],
)
def test_wrong_schema_names_line_and_field(tmp_path, capsys, bad, field):
    second = dict(GOOD_ITEMS[1], **bad)
    path = write_items(tmp_path / "items.jsonl", [GOOD_ITEMS[0], second, GOOD_ITEMS[2]])
    assert cli.main(["score", "--data", str(path), "--out", str(tmp_path / "t.safetensors")]) == 1
    line = error_line(capsys, "score")
    assert f"{path}, line 2: field '{field}'" in line


def test_unknown_model(tmp_path, capsys):
    data = write_items(tmp_path / "items.jsonl", GOOD_ITEMS)
    out = str(tmp_path / "t.safetensors")
    missing = tmp_path / "no" / "such" / "model"
    assert cli.main(["score", "--model", str(missing), "--data", str(data), "--out", out]) == 1
    assert f"model folder not found: {missing}" in error_line(capsys, "score")
    assert cli.main(["score", "--model", str(tmp_path / "m.gguf"), "--data", str(data), "--out", out]) == 1
    assert f"GGUF file not found: {tmp_path / 'm.gguf'}" in error_line(capsys, "score")
    assert cli.main(["evaluate", "--model", str(data), "--data", str(data), "--out", str(tmp_path / "ev")]) == 1
    assert f"{data} is a file but not a .gguf model" in error_line(capsys, "evaluate")


# ------------------------------------------------------------------------------ identify: synthetic tables
SITES = {}
for _i in range(2):
    SITES[f"layers.{_i}.mlp.gate_proj"] = 50
    SITES[f"layers.{_i}.self_attn.q_proj"] = 20
    SITES[f"layers.{_i}.self_attn.k_proj"] = 10
    SITES[f"layers.{_i}.self_attn.v_proj"] = 10
G0, G1 = "layers.0.mlp.gate_proj", "layers.1.mlp.gate_proj"
Q0, K0, V0 = "layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj"
Q1, K1, V1 = "layers.1.self_attn.q_proj", "layers.1.self_attn.k_proj", "layers.1.self_attn.v_proj"


def base(groups: int, seed: int) -> dict[str, torch.Tensor]:
    """Negative filler scores in (-1, 0]: every planted positive score outranks them."""
    g = torch.Generator().manual_seed(seed)
    return {site: -torch.rand(groups, width, generator=g, dtype=torch.float64) for site, width in SITES.items()}


# General: 100 MLP and 80 attention neurons. Contrast = sum_g neur / 5 - sum_g ctrl / 10.
GENERAL_MLP = {(G0, 7): 9.0, (G1, 3): 8.0, (G0, 42): 7.0, (G1, 49): 6.0, (G0, 0): 5.0, (G1, 20): 4.0, (G1, 21): 3.0}
GENERAL_ATTN = {(Q0, 19): 3.0, (V1, 0): 2.5, (K0, 5): 2.0, (Q1, 0): 1.5, (V0, 9): 1.0, (K1, 9): 0.5}
GENERAL_CANCELLED = (G0, 11)  # neur contrast 20, minus ctrl 20: 0
GENERAL_CRC = [(G0, 42), (G1, 21), (K1, 9)]  # top CountryRC neurons: 2 MLP, 1 attention
# t_mlp 0.065: floor(6.5) = 6 -> the six best MLP (9 .. 4); r_mlp 0.025: floor(2.5) = 2 removed: (G0, 42) and
# (G1, 21), which was not chosen. t_attn 0.0625: floor(5.0) = 5 -> 3 .. 1.0; r_attn 0.02: floor(1.6) = 1 removed:
# (K1, 9), not chosen. The cancelled neuron (neur 20) is out because of the control.
GENERAL_EXPECTED = {(G0, 7): 9.0, (G1, 3): 8.0, (G1, 49): 6.0, (G0, 0): 5.0, (G1, 20): 4.0,
                    (Q0, 19): 3.0, (V1, 0): 2.5, (K0, 5): 2.0, (Q1, 0): 1.5, (V0, 9): 1.0}


def general_tables() -> tuple[ScoreTable, ScoreTable, ScoreTable]:
    neur, ctrl, crc = base(2, 0), {s: torch.zeros(2, w, dtype=torch.float64) for s, w in SITES.items()}, base(2, 1)
    for (site, i), value in {**GENERAL_MLP, **GENERAL_ATTN}.items():
        neur[site][:, i] = torch.tensor([value * 5, 0.0])
    site, i = GENERAL_CANCELLED
    neur[site][:, i] = torch.tensor([100.0, 0.0])
    ctrl[site][:, i] = torch.tensor([0.0, 200.0])
    for site, i in GENERAL_CRC:
        crc[site][:, i] = 50.0
    meta = {"model": "synthetic"}
    return (ScoreTable(["US", "Japan"], [2, 3], neur, metadata=meta),
            ScoreTable(["US", "Japan"], [4, 6], ctrl, metadata=meta),
            ScoreTable(["US", "Japan"], [5, 5], crc, metadata=meta))


def save_tables(tmp_path: Path, tables) -> list[str]:
    paths = []
    for name, table in zip(("neur", "ctrl", "crc"), tables):
        paths.append(str(table.save(tmp_path / f"{name}.safetensors")))
    return paths


def assert_neurons(ns: NeuronSet, expected: dict[tuple[str, int], float]) -> None:
    assert_same_neurons(ns, expected, rel=1e-12, abs=0.0)


def test_identify_general(tmp_path, capsys):
    neur, ctrl, crc = save_tables(tmp_path, general_tables())
    out = tmp_path / "sets" / "general.json"
    argv = ["identify", "general", "--neur", neur, "--ctrl", ctrl, "--crc", crc, "--out", str(out),
            "--t-mlp", "0.065", "--t-attn", "0.0625", "--r-mlp", "0.025", "--r-attn", "0.02"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}: 10 culture-general neurons {{'mlp': 5, 'attn': 5}}"
    raw = json.loads(out.read_text())
    assert (raw["format"], raw["method"], raw["model"]) == ("culnig-neurons/1", "general", "synthetic")
    assert raw["params"]["t_mlp"] == 0.065 and raw["params"]["normalize"] == "count"
    assert_neurons(NeuronSet.load(out), GENERAL_EXPECTED)

    # Without the control table the cancelled neuron (contrast 20) comes first and pushes out the sixth MLP one.
    assert argv[4] == "--ctrl"
    assert cli.main(argv[:4] + argv[6:]) == 0
    capsys.readouterr()
    no_ctrl = {key: value for key, value in GENERAL_EXPECTED.items() if key != (G1, 20)}
    assert_neurons(NeuronSet.load(out), {**no_ctrl, GENERAL_CANCELLED: 20.0})


# Specific: 3 groups, 180 neurons pooled. S[g] = neur[g] / 6 - ctrl[g] / 9 ("total": the tables' item counts).
SHARED = (G1, 10)  # 9.5 in every group: z = 0
PLANTED = {
    "US": {(G0, 1): 10.0, (Q0, 2): 9.0, (V1, 3): 8.0, (G1, 4): 7.0, (K0, 4): 6.0},
    "Japan": {(G0, 5): 10.0, (Q1, 6): 9.0, (G0, 49): 8.0, (V0, 0): 7.0, (K1, 1): 6.0},
    "Kenya": {(Q0, 0): 10.0, (G1, 0): 9.0, (K1, 2): 8.0, (V1, 9): 7.0, (G0, 20): 6.0},
}
SPECIFIC_CRC = {"US": (Q0, 2), "Japan": (K1, 1), "Kenya": (Q0, 0)}
US_CANCELLED = (G0, 30)
# --t 0.03: floor(5.4) = 5 -> per group its four best planted neurons and SHARED; --r 0.01: floor(1.8) = 1 removed
# (US: its 9.0 neuron; Japan: its 6.0 one, not chosen anyway; Kenya: its 10.0 one); z >= 0.5 drops SHARED.
SPECIFIC_EXPECTED = {
    "US": {(G0, 1): 10.0, (V1, 3): 8.0, (G1, 4): 7.0},
    "Japan": {(G0, 5): 10.0, (Q1, 6): 9.0, (G0, 49): 8.0, (V0, 0): 7.0},
    "Kenya": {(G1, 0): 9.0, (K1, 2): 8.0, (V1, 9): 7.0},
}
GROUPS = ["US", "Japan", "Kenya"]


def specific_tables() -> tuple[ScoreTable, ScoreTable, ScoreTable]:
    neur, ctrl, crc = base(3, 2), {s: torch.zeros(3, w, dtype=torch.float64) for s, w in SITES.items()}, base(3, 3)
    for row, group in enumerate(GROUPS):
        for (site, i), value in PLANTED[group].items():
            neur[site][row, i] = value * 6
        site, i = SPECIFIC_CRC[group]
        crc[site][row, i] = 50.0
    neur[SHARED[0]][:, SHARED[1]] = 9.5 * 6
    neur[US_CANCELLED[0]][0, US_CANCELLED[1]] = 20 * 6  # US: S = 20 - 20 = 0
    ctrl[US_CANCELLED[0]][0, US_CANCELLED[1]] = 20 * 9
    # The control table lists the groups in another order: rows are matched by name.
    ctrl_order = [2, 0, 1]
    ctrl = {s: t[ctrl_order] for s, t in ctrl.items()}
    return (ScoreTable(GROUPS, [2, 2, 2], neur, metadata={"model": "synthetic"}),
            ScoreTable([GROUPS[i] for i in ctrl_order], [3, 3, 3], ctrl, metadata={"model": "synthetic"}),
            ScoreTable(GROUPS, [1, 1, 1], crc, metadata={"model": "synthetic"}))


def test_identify_specific_all_groups_and_one_group(tmp_path, capsys):
    neur, ctrl, crc = save_tables(tmp_path, specific_tables())
    folder = tmp_path / "specific"
    common = ["--neur", neur, "--ctrl", ctrl, "--crc", crc, "--t", "0.03", "--r", "0.01", "--z-min", "0.5"]
    assert cli.main(["identify", "specific", *common, "--all-groups", "--out", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {folder}: culture-specific neurons US: 3, Japan: 4, Kenya: 3"
    assert sorted(p.name for p in folder.iterdir()) == ["japan.json", "kenya.json", "us.json"]
    for group in GROUPS:
        ns = NeuronSet.load(folder / f"{group.lower()}.json")
        assert ns.method == "specific" and ns.params["group"] == group and ns.params["normalize"] == "total"
        assert_neurons(ns, SPECIFIC_EXPECTED[group])

    one = tmp_path / "japan.json"
    assert cli.main(["identify", "specific", *common, "--group", "Japan", "--out", str(one)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {one}: culture-specific neurons Japan: 4"
    assert NeuronSet.load(one) == NeuronSet.load(folder / "japan.json")


def test_identify_specific_unknown_group(tmp_path, capsys):
    neur, ctrl, crc = save_tables(tmp_path, specific_tables())
    out = tmp_path / "x.json"
    assert cli.main(["identify", "specific", "--neur", neur, "--group", "Atlantis", "--out", str(out)]) == 1
    line = error_line(capsys, "identify")
    assert "unknown group 'Atlantis'" in line and "['US', 'Japan', 'Kenya']" in line
    assert not out.exists()


def test_identify_specific_needs_exactly_one_of_group_and_all_groups(tmp_path, capsys):
    neur, _, _ = save_tables(tmp_path, specific_tables())
    for extra in ([], ["--group", "US", "--all-groups"]):
        assert cli.main(["identify", "specific", "--neur", neur, "--out", str(tmp_path / "o"), *extra]) == 1
        assert "give exactly one of --group NAME or --all-groups" in error_line(capsys, "identify")


def test_identify_bad_table_file_and_output_folder(tmp_path, capsys):
    not_a_table = tmp_path / "n.safetensors"
    not_a_table.write_text("hello")
    assert cli.main(["identify", "general", "--neur", str(not_a_table), "--out", str(tmp_path / "g.json")]) == 1
    assert f"{not_a_table}: not a readable safetensors score file" in error_line(capsys, "identify")
    missing = tmp_path / "missing.safetensors"
    assert cli.main(["identify", "general", "--neur", str(missing), "--out", str(tmp_path / "g.json")]) == 1
    assert f"score file not found: {missing}" in error_line(capsys, "identify")
    # The output path is an existing folder: a one-line reason naming it, not a traceback.
    neur, _, _ = save_tables(tmp_path, general_tables())
    folder = tmp_path / "already_a_folder"
    folder.mkdir()
    assert cli.main(["identify", "general", "--neur", neur, "--out", str(folder)]) == 1
    line = error_line(capsys, "identify")
    assert f"--out {folder}: is a folder; give a file name" in line


# ------------------------------------------------------------------------------------------------- report
RESULTS = {
    "format": "culnig-report/1", "title": "Hand-made run", "model": "tiny", "neuron_set": "culture-general",
    "n_neurons": 12, "alpha": 0.05,
    "rows": [
        {"eval_set": "BLEnD", "cultural": True, "n_items": 10, "original": 0.5, "inhibited": 0.3,
         "random": [0.4, 0.5], "p_value": 0.012, "metric": "accuracy"},
        {"eval_set": "CommonsenseQA", "cultural": False, "n_items": 20, "original": 0.75, "inhibited": 0.7,
         "random": [0.75], "p_value": 0.3, "metric": "accuracy"},
    ],
    "kinship": None,
    "layers": {"num_layers": 2, "counts": {"mlp": [3, 4], "attn": [5, 0]}},
    "notes": ["written by hand"],
    "metadata": {"format": "cloze"},
}


def test_report_from_results_json(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    assert cli.main(["report", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'report.md'}, {tmp_path / 'report.html'}"
    assert "<h1>Hand-made run</h1>" in (tmp_path / "report.html").read_text(encoding="utf-8")
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# Hand-made run\n")
    # 45.00 +- 7.07: mean and sample sd of 40 % and 50 %; a single random set has no sd.
    # ours - random: 30 - 45 = -15.00 and 70 - 75 = -5.00 points; no MDE in a hand-made file; Holm by hand:
    # 0.012 x 2 = 0.024, then max(0.024, 0.3 x 1) = 0.3
    assert "| BLEnD | accuracy | 10 | 50.00 | 30.00 | 45.00 ± 7.07 | -15.00 | – | 0.0120 | 0.0240 | yes |" in report
    assert ("| CommonsenseQA (non-cultural) | accuracy | 20 | 75.00 | 70.00 | 75.00 | -5.00 | – | 0.3000 | 0.3000 | no |"
            in report)
    assert "MLP neurons: 7; attention neurons: 5; 2 layers." in report
    assert "- written by hand" in report
    assert (tmp_path / "layers.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "kinship.png").exists()


def test_report_errors(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 1
    assert f"{tmp_path / 'results.json'}: no results to report" in error_line(capsys, "report")
    bad = json.loads(json.dumps(RESULTS))
    bad["rows"][1]["original"] = 1.5
    (tmp_path / "results.json").write_text(json.dumps(bad))
    assert cli.main(["report", str(tmp_path)]) == 1
    assert "rows[1].original: expected an accuracy in [0, 1], got 1.5" in error_line(capsys, "report")
    assert not (tmp_path / "report.md").exists()


# ------------------------------------------------------------------------------ score / evaluate (tiny model)
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("cli_model"))


def test_score_and_control(tiny_dir, tmp_path, capsys):
    data = write_items(tmp_path / "items.jsonl", GOOD_ITEMS)
    common = ["score", "--model", str(tiny_dir), "--data", str(data), "--format", "cloze", "--no-progress"]
    out = tmp_path / "scores.safetensors"
    assert cli.main([*common, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().startswith(f"wrote {out}: ScoreTable(2 groups, 4 items")
    table = ScoreTable.load(out)
    assert table.groups == ["A", "B"] and table.counts.tolist() == [2, 2]
    assert {s: table[s].shape[1] for s in table.sites} == TINY_WIDTHS
    assert (table.metadata["model"], table.metadata["clamp_min"]) == (str(tiny_dir), "")
    assert (table.prob_sums > 0).all()

    ctrl_out = tmp_path / "ctrl.safetensors"
    assert cli.main([*common, "--control", "--out", str(ctrl_out)]) == 0
    capsys.readouterr()
    ctrl = ScoreTable.load(ctrl_out)
    # --control alone means the paper's empty control, with item scores clamped at 0: no negative sums.
    assert ctrl.metadata["clamp_min"] == "0.0"
    assert ctrl.metadata["dataset_fingerprint"] != table.metadata["dataset_fingerprint"]
    assert all((ctrl[s] >= 0).all() for s in ctrl.sites)


def test_evaluate_with_inhibition(tiny_dir, tmp_path, capsys):
    data = write_items(tmp_path / "items.jsonl", GOOD_ITEMS)
    neurons = NeuronSet([Neuron("layers.0.mlp.gate_proj", 3, 1.0), Neuron("layers.1.self_attn.k_proj", 15, 0.5)],
                        method="general")
    neurons.save(tmp_path / "set.json")
    out = tmp_path / "ev"
    common = ["evaluate", "--model", str(tiny_dir), "--data", str(data), "--format", "cloze", "--no-progress"]
    assert cli.main([*common, "--inhibit", str(tmp_path / "set.json"), "--random", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.strip().endswith(f"wrote {out / 'report.md'}")
    results = json.loads((out / "results.json").read_text())
    assert results["n_neurons"] == 2 and len(results["rows"]) == 1
    row = results["rows"][0]
    assert row["eval_set"] == str(data) and row["n_items"] == 4 and len(row["random"]) == 1
    records = sorted((out / "eval").iterdir())
    assert len(records) == 3
    by_cond = {p.name.rsplit("__", 1)[1]: EvalResult.load(p) for p in records}
    assert set(by_cond) == {"original.json", "inhibited.json", "random0.json"}
    assert row["original"] == by_cond["original.json"].accuracy
    assert row["inhibited"] == by_cond["inhibited.json"].accuracy
    assert row["random"] == [by_cond["random0.json"].accuracy]

    # A set that does not fit the model, and random sets without a set to imitate, are refused.
    NeuronSet([Neuron("layers.5.mlp.gate_proj", 0, 1.0)]).save(tmp_path / "bad.json")
    assert cli.main([*common, "--inhibit", str(tmp_path / "bad.json"), "--out", str(out)]) == 1
    assert "site 'layers.5.mlp.gate_proj' of this neuron set is not a site of the model" in error_line(capsys, "evaluate")
    assert cli.main([*common, "--random", "2", "--out", str(out)]) == 1
    assert "--random needs --inhibit" in error_line(capsys, "evaluate")
