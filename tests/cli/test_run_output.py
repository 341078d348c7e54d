"""What ``culnig run`` says on a tiny model: the plan and the estimated time at the start (stderr), the answer at the
end (stdout: verdict, neuron count, main accuracy row, run time, paths, next commands), each number as the run's
files have it; none of those lines under ``--no-progress --json``."""
from __future__ import annotations

import json

import pytest

from culnig_ext.cli import main as cli
from tests.studies.test_pipeline import BUILTIN, FRACTIONS, one_thread, save_tiny_model  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("out_model"))


def argv(model_dir, out, *extra):
    fractions = [x for k, v in FRACTIONS.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    return ["run", "--out", str(out), "--model", str(model_dir), "--format", "cloze", "--random", "2",
            "--max-test-items", "6", "--max-scoring-items", "24", "--kinship-groups", "2", "--data", BUILTIN["data"],
            "--crc", BUILTIN["crc"], "--crc-test", BUILTIN["crc_test"], *fractions, *extra]


def test_the_run_says_what_it_will_do_and_ends_with_the_answer(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(argv(model_dir, out)) == 0
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("[culnig]")]
    # the plan, before the model is loaded; the estimate after the warm-up, before scoring
    plan_at = err.index("[culnig] plan: full study (changed: --max-scoring-items 24, --max-test-items 6, --random 2, "
                        "--kinship-groups 2), 5 stages")
    assert err[plan_at + 1:plan_at + 6] == [
        "[culnig]   1/5 score: 24 cultural + 24 control (empty) + 24 CountryRC items, forward + backward",
        "[culnig]   2/5 identify: culture-general and -specific neurons; stability over 10 parts, 5 bootstrap "
        "resamples; instance view (24 items)",
        "[culnig]   3/5 inhibit and evaluate: 4 conditions (original, ours, 2 random sets) x 6 cultural test, "
        "6 CountryRC test, 6 non-cultural items",
        "[culnig]   4/5 kinship: 2 of 8 groups' specific sets x their ~2 test items (the original model's results "
        "reused)",
        "[culnig]   5/5 report: report.md, results.json, figures",
    ]
    loading = err.index(f"[culnig] loading model '{model_dir}'")
    estimate = [i for i, line in enumerate(err) if line.startswith("[culnig] estimated time: about ")]
    scoring = err.index("[culnig] culture items: scoring 24 items")
    assert plan_at < loading < estimate[0] < scoring and len(estimate) == 1
    assert "for stages 1-5 (warm-up: " in err[estimate[0]]

    results = json.loads((out / "results.json").read_text())
    lines = captured.out.splitlines()
    verdict = results["verdict"]
    assert lines[0] == f"Verdict: {verdict['label']} — {verdict['reason']}."
    mlp, attn = (sum(results["layers"]["counts"][k]) for k in ("mlp", "attn"))
    assert lines[1].startswith(f"Neurons: {results['n_neurons']} culture-general ({mlp} MLP gate, {attn} attention "
                               "q/k/v); culture-specific in ")
    row = results["rows"][0]
    assert row["eval_set"] == "Cultural test (BLEnD-style)"
    assert lines[2].startswith(f"Main result: Cultural test (BLEnD-style), 6 items: original "
                               f"{100 * row['original']:.1f}%, ours {100 * row['inhibited']:.1f}%, random ")
    assert f"ours − random {100 * (row['inhibited'] - sum(row['random']) / 2):+.1f} points" in lines[2]
    assert f"MDE {100 * row['mde']:.1f}, p = {row['p_value']:.3g}" in lines[2]
    # results.json keeps the time to 0.1 s, the summary rounds the exact one: either neighbour of the rounded value
    total = float(results["metadata"]["time_total"])
    candidates = {round(total - 0.05), round(total + 0.05)}
    assert lines[3].startswith("Run time: ") and lines[3].endswith("(full study, cloze format, protocol ours).")
    assert lines[3][len("Run time: "):].split(" (")[0] in {text for seconds in candidates for text in
                                                           (f"{seconds} s", f"{seconds // 60} min {seconds % 60} s")}
    assert lines[4] == f"Outputs in {out}/:" and lines[5] == f"  report     {out / 'report.md'}"
    nxt = lines.index("Next:")
    assert lines[nxt + 1].startswith(f"  culnig report {out}") and f"culnig run --config {out / 'config.json'}" in \
        captured.out
    assert "--full" not in captured.out  # it was the full study already
    planted = out.parent / "planted"
    assert lines[-1].startswith(f"  culnig plant --out {planted} && culnig validate {planted} --out "
                                f"{out.parent / 'validation'}  # ")

    kin = results["kinship"]
    specific = [p.stem for p in (out / "neurons" / "specific").iterdir()]
    # 2 of the 8 groups' sets, on those of their items among the 6 test items
    assert len(kin["targets"]) == 2 and set(kin["groups"]) <= set(kin["targets"]) and len(specific) == 8
    report = (out / "report.md").read_text()
    assert "## Study size and power" in report and "| random sets | 2 | 10 |" in report
    assert f"| Cultural test (BLEnD-style) | 6 | {100 * row['mde']:.2f} |" in report


def test_quiet_under_no_progress_and_json(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(argv(model_dir, out, "--no-progress", "--json")) == 0
    captured = capsys.readouterr()
    assert "plan:" not in captured.err and "estimated time" not in captured.err
    assert "culnig run: stage" not in captured.err
    (line,) = captured.out.splitlines()  # one JSON object, no summary lines
    summary = json.loads(line)
    assert summary["ok"] and summary["verdict"]["label"] in ("culture-specific", "not specific", "inconclusive")
    assert summary["main_row"]["eval_set"] == "Cultural test (BLEnD-style)" and summary["main_row"]["n_items"] == 6
    assert [s["key"] for s in summary["plan"]["stages"]] == ["score", "identify", "evaluate", "kinship", "report"]
    assert summary["config"] == json.loads((out / "config.json").read_text())
