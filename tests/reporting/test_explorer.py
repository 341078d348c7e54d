"""report.html without a browser: self-contained (no network reference, Plotly inline), written by write_report
beside report.md, its data block holding the hand-made run's numbers, and the Markdown pieces it renders."""
from __future__ import annotations

import html
import json
import re

import pytest

from culnig_ext.reporting.explorer import (DATA_ID, markdown_blocks, page_data, render_page, stability_rows,
                                           write_explorer)
from culnig_ext.reporting.report import read_results, write_report, write_report_from_dir
from tests.reporting.run_folder import ATTN, MLP, RESULTS, make_run


def data_of(page: str) -> dict:
    m = re.search(rf"<script type='application/json' id='{DATA_ID}'>(.*?)</script>", page, re.S)
    assert m is not None
    return json.loads(m.group(1))


def test_write_report_writes_the_page_beside_report_md(tmp_path):
    run = make_run(tmp_path / "run")
    write_report_from_dir(run)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert (run / "report.md").is_file()
    # self-contained: Plotly's bundle inline, and nothing else of ours refers to the network (the bundle's own
    # strings hold links, e.g. its "produced with Plotly" logo link, that nothing loads)
    from plotly.offline import get_plotlyjs

    bundle = get_plotlyjs()
    assert len(bundle) > 3_000_000 and f"<script>{bundle}</script>" in page
    ours = page.replace(bundle, "")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", ours)
    assert "@import" not in ours and "url(" not in ours and "<link" not in ours
    assert "A note with &lt;b&gt;markup&lt;/b&gt; that must stay text." in page


def test_accuracy_table_cells(tmp_path):
    run = make_run(tmp_path / "run")
    page = render_page(read_results(run).to_dict(), page_data(run, RESULTS))
    table = re.search(r"<table id=\"accuracy-table\">(.*?)</table>", page, re.S).group(1)
    rows = [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", tr)] for tr in re.findall(r"<tr>(.*?)</tr>", table)]
    rows = [r for r in rows if r]
    # hand-formatted: 62.50 original, 25.00 ours, random 62.50 ± 17.68 (sd of .5, .75), diff -37.50 [-50.00, -12.50]
    assert rows[0][:8] == ["Cultural test", "accuracy", "8", "62.50", "25.00", "62.50 ± 17.68",
                           "-37.50 [-50.00, -12.50]", "18.75"]
    assert rows[0][8] == "0.0200" and rows[1][0] == "General knowledge (non-cultural)" and rows[1][8] == "0.5000"


def test_page_data_from_the_folder(tmp_path):
    run = make_run(tmp_path / "run")
    data = page_data(run, RESULTS, top_n=0)
    n = data["neurons"]
    got = sorted((n["sites"][s], i) for s, i in zip(n["site"], n["index"]))
    assert got == sorted([(MLP, 0), (ATTN, 2), (MLP, 1)])  # the sets only, top_n=0
    assert data["layers"] == {"num_layers": 2, "sets": {
        "culture-general": {"mlp": [1, 0], "attn": [0, 1]},
        "culture-specific (all groups)": {"mlp": [2, 0], "attn": [0, 1]}}}
    assert data["kinship"] == RESULTS["kinship"]
    assert data["config"] == {"model": "org/tiny-model", "seed": 7}
    assert data["instance"]["neurons"][f"{MLP}:0"]["top"] == [[0, 0.5], [1, 0.25]]
    assert data["stability"] == [
        {"scope": "all neurons", "split_half": 0.67, "chance": 0.10, "boot_mean": 0.80, "boot_min": 0.50},
        {"scope": "MLP gate", "split_half": 1.0, "chance": 0.25, "boot_mean": None, "boot_min": None}]
    assert data["provenance"]["neurons general: sources"] == "neur abc"


def test_html_can_be_skipped_and_top_n_passed(tmp_path):
    run = make_run(tmp_path / "run")
    write_report(run, read_results(run), html=False)
    assert not (run / "report.html").exists()
    write_explorer(run, RESULTS, top_n=2)
    n = data_of((run / "report.html").read_text(encoding="utf-8"))["neurons"]
    assert len(n["index"]) == 3 + 2 and n["top_n"] == 2


def test_a_folder_without_neurons_or_scores_still_gets_a_page(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(RESULTS), encoding="utf-8")
    write_report_from_dir(tmp_path)
    data = data_of((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert data["neurons"]["index"] == [] and data["instance"] is None and data["config"] is None
    assert data["layers"] == {"num_layers": 2, "sets": {"inhibited set": {"mlp": [1, 0], "attn": [0, 1]}}}


def test_script_data_cannot_close_the_script(tmp_path):
    run = make_run(tmp_path / "run")
    bad = dict(RESULTS, title="</script><script>alert(1)</script>")
    page = render_page(bad, dict(page_data(run, bad), title=bad["title"]))
    assert page.count("</script>") == page.count("<script")  # the title's tags are escaped, in text and in JSON


def test_markdown_blocks():
    blocks = markdown_blocks("One line\nand its rest.\n\n| a | b |\n|---|--:|\n| 1 | **x** |\n\nLast.")
    assert blocks == [{"kind": "text", "text": "One line and its rest."},
                      {"kind": "table", "header": ["a", "b"], "rows": [["1", "**x**"]]},
                      {"kind": "text", "text": "Last."}]
    assert stability_rows([{"title": "Study size", "markdown": "| a |\n|---|\n| 1 |"}]) is None


@pytest.mark.parametrize("bad", ["{", "[1,"])
def test_bad_config_names_the_file(tmp_path, bad):
    run = make_run(tmp_path / "run")
    (run / "config.json").write_text(bad, encoding="utf-8")
    with pytest.raises(ValueError, match=r"config.json: line 1: not valid JSON"):
        page_data(run, RESULTS)
