"""``culnig export`` and ``culnig report --html`` on the hand-made run folder of tests/reporting."""
from __future__ import annotations

import json

from culnig_ext.cli import main as cli
from culnig_ext.reporting.exports import read_tidy
from culnig_ext.selection.neurons import NeuronSet
from tests.reporting.run_folder import make_run


def test_export_formats(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert cli.main(["export", str(run), "--format", "parquet", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["files"] == [str(run / "export" / "neurons.parquet"), str(run / "export" / "neurons.parquet.meta.json")]
    assert read_tidy(run / "export" / "neurons.parquet")["neurons/general"] == NeuronSet.load(
        run / "neurons" / "general.json")
    assert cli.main(["export", str(run), "--format", "csv", "--out", str(tmp_path / "x" / "n.csv")]) == 0
    assert (tmp_path / "x" / "n.csv.meta.json").is_file()
    assert cli.main(["export", str(run), "--format", "neuronpedia"]) == 0
    assert json.loads((run / "export" / "neuronpedia.json").read_text())["features"]


def test_report_html_only_rewrites_the_page(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert cli.main(["report", str(run)]) == 0
    md = (run / "report.md").stat().st_mtime_ns
    (run / "report.html").unlink()
    assert cli.main(["report", str(run), "--html", "--top-n", "1"]) == 0
    assert capsys.readouterr().out.strip().endswith("report.html")
    assert (run / "report.md").stat().st_mtime_ns == md
    page = (run / "report.html").read_text(encoding="utf-8")
    assert '"top_n": 1' in page
    assert cli.main(["report", str(run), "--top-n", "-2"]) == 1
    assert "--top-n must be a whole number >= 0, got -2" in capsys.readouterr().err
