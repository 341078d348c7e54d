"""report.html in a real browser: Debian's chromium + chromium-driver, headless, through Selenium, on the file.

A tiny-model run (the random Llama of tests/studies/test_pipeline.py, builtin data) is made once; its page is opened
from ``file://`` and the DOM is read back: the accuracy table against ``results.json``, the Plotly figures
(rendered, with the layer counts of ``neurons/general.json`` and the kinship matrix of ``results.json``), the
neuron table (the general set's scores, its filter and paging) and a neuron card after a click (its per-group bars
recomputed here from the score tables, its items with their question texts from the builtin data). A screenshot goes
to the test's tmp folder. Skips, saying why, where selenium, chromium or chromedriver is missing (``scripts/setup.sh``
never installs a browser; ``.ci/run`` does).

``test_embedded_page_load_time`` measures the embedded-model run's page (``CULNIG_EMBEDDED_RUN``: a run folder of
``culnig run``, copied first; never written into) and prints its size and load time, not asserted;
``CULNIG_EXPLORER_PNG=docs/images/explorer.png`` also saves its screenshot there (the README's picture).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch

from culnig_ext.data import load_items
from culnig_ext.reporting.report import write_report_from_dir
from culnig_ext.scoring.table import ScoreTable
from culnig_ext.studies.pipeline import RunConfig, run_pipeline
from tests.studies.test_pipeline import BUILTIN, FRACTIONS, MAX_TEST, N_ATTN, N_MLP, save_tiny_model

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements-dev.txt)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="no chromium/chromedriver found (Debian: apt-get install chromium "
                                       "chromium-driver; .ci/run installs them)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1000"]


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="culnig-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path: Path) -> float:
    """Load the page and wait for its script to finish; returns the seconds from navigation to ready."""
    t = time.perf_counter()
    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    seconds = time.perf_counter() - t
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors
    return seconds


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = save_tiny_model(tmp_path_factory.mktemp("tiny_llama"))
        cfg = RunConfig(out=str(tmp_path_factory.mktemp("run") / "r"), model=str(model), format="cloze", n_random=2,
                        **BUILTIN, max_test_items=MAX_TEST, progress=False, **FRACTIONS)
        return Path(run_pipeline(cfg).run_dir)
    finally:
        torch.set_num_threads(before)


def cells(driver, css: str) -> list[list[str]]:
    return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")] for tr in driver.find_elements(By.CSS_SELECTOR, css)]


def test_tiny_run_page(browser, run_dir, tmp_path):
    results = json.loads((run_dir / "results.json").read_text())
    general = json.loads((run_dir / "neurons" / "general.json").read_text())["neurons"]
    seconds = open_page(browser, run_dir / "report.html")
    size = (run_dir / "report.html").stat().st_size
    print(f"\ntiny-model run page: {size / 1e6:.2f} MB, ready after {seconds:.2f} s in headless Chromium")

    # the accuracy table, formatted here from results.json
    rows = cells(browser, "#accuracy-table tbody tr")
    assert len(rows) == len(results["rows"])
    for got, want in zip(rows, results["rows"]):
        assert got[2] == str(want["n_items"])
        assert got[3] == f"{100 * want['original']:.2f}" and got[4] == f"{100 * want['inhibited']:.2f}"
        assert got[9] == (f"{want['p_holm']:.4f}" if want["p_holm"] >= 1e-4 else f"{want['p_holm']:.1e}")

    # the figures: rendered by Plotly, holding the run's numbers
    for plot in ("layer-plot", "kinship-plot", "stability-plot"):
        assert browser.find_elements(By.CSS_SELECTOR, f"#{plot}.js-plotly-plot .main-svg"), plot
    per_layer = {"mlp": [0, 0], "attn": [0, 0]}
    for n in general:
        per_layer["mlp" if ".mlp." in n["site"] else "attn"][int(n["site"].split(".")[1])] += 1
    ys = browser.execute_script("return document.getElementById('layer-plot').data.map(t => [t.name, t.y])")
    assert ys[0] == ["culture-general · MLP gate", per_layer["mlp"]]
    assert ys[1] == ["culture-general · attention q/k/v", per_layer["attn"]]
    z = browser.execute_script("return document.getElementById('kinship-plot').data[0].z")
    matrix = results["kinship"]["matrix"]
    assert [len(row) for row in z] == [len(row) for row in matrix]
    assert sum(z, []) == pytest.approx([100 * v for row in matrix for v in row])

    # the neuron table: every neuron of the tiny model (fewer than the default top 1000 others), paged by 50
    info = browser.find_element(By.ID, "page-info").text
    assert info == f"1–50 of {N_MLP + N_ATTN} rows (page 1 of {-(-(N_MLP + N_ATTN) // 50)})"
    browser.find_element(By.ID, "neuron-set").send_keys("culture-general")
    shown = [tr for tr in browser.find_elements(By.CSS_SELECTOR, "#neuron-table tbody tr")]
    assert len(shown) == len(general)
    header = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#neuron-table thead th")]
    col = {name.rstrip(" ▼▲"): j for j, name in enumerate(header)}
    by_key = {(n["site"], n["index"]): n["score"] for n in general}
    contrasts = []
    for tr in shown:
        tds = tr.find_elements(By.TAG_NAME, "td")
        key = (tds[col["site"]].text, int(tds[col["index"]].text))
        value = float(tds[col["contrast"]].get_attribute("data-value"))
        assert value == pytest.approx(by_key[key], rel=1e-5), key  # contrast = the general set's score
        contrasts.append(value)
    assert contrasts == sorted(contrasts, reverse=True)

    # a neuron card: per-group bars recomputed from the score tables, items with their questions
    first = shown[0]
    site, index = first.find_elements(By.TAG_NAME, "td")[col["site"]].text, int(
        first.find_elements(By.TAG_NAME, "td")[col["index"]].text)
    first.click()
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "card-title").text == f"{site}[{index}]")
    neur = ScoreTable.load(run_dir / "scores" / "neur.safetensors")
    ctrl = ScoreTable.load(run_dir / "scores" / "ctrl.safetensors")
    want = [float(neur[site][g, index]) / int(neur.counts.sum())
            - float(ctrl[site][ctrl.groups.index(name), index]) / int(ctrl.counts.sum())
            for g, name in enumerate(neur.groups)]
    bars = browser.execute_script("var t = document.getElementById('card-plot').data[0]; return [t.x, t.y]")
    assert bars[0] == neur.groups and bars[1] == pytest.approx(want, rel=1e-5, abs=1e-12)
    questions = {it.id: it.question for it in load_items(BUILTIN["data"], max_per_question=None)}
    items = cells(browser, "#card-items-table tbody tr")
    assert len(items) == 10
    for item_id, group, question, _ in items:
        assert questions[item_id] == question
    browser.find_element(By.ID, "neurons").screenshot(str(tmp_path / "explorer.png"))
    assert (tmp_path / "explorer.png").stat().st_size > 10_000

    # the filter: one layer's MLP gate neurons
    browser.find_element(By.ID, "neuron-set").send_keys("all rows")
    browser.find_element(By.ID, "neuron-filter").send_keys("layers.1.mlp")  # applied once typing pauses
    WebDriverWait(browser, 20).until(
        lambda d: d.find_element(By.ID, "page-info").text.startswith(f"1–48 of {N_MLP // 2} rows"))


@pytest.mark.skipif(not os.environ.get("CULNIG_EMBEDDED_RUN"),
                    reason="set CULNIG_EMBEDDED_RUN to a 'culnig run' folder of the embedded model to time its page")
def test_embedded_page_load_time(browser, tmp_path):
    source = Path(os.environ["CULNIG_EMBEDDED_RUN"])
    run = tmp_path / "embedded"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("eval", "*_parts.safetensors", "export"))
    write_report_from_dir(run)
    page = run / "report.html"
    times = [open_page(browser, page) for _ in range(3)]
    rows = browser.execute_script("return document.getElementById('page-info').textContent")
    print(f"\nembedded-model run page: {page.stat().st_size / 1e6:.2f} MB ({rows}); ready after "
          + ", ".join(f"{t:.2f}" for t in times) + " s in headless Chromium (3 loads)")
    target = os.environ.get("CULNIG_EXPLORER_PNG")
    if target:
        browser.set_window_size(1400, 2000)
        browser.find_element(By.ID, "neuron-per-page").send_keys("25")
        browser.find_element(By.CSS_SELECTOR, "#neuron-table tbody tr td").click()
        WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "card-title").text)
        browser.execute_script("document.querySelector('.table-wrap').scrollLeft = 0;"
                               "document.getElementById('neurons').scrollIntoView()")
        browser.find_element(By.ID, "neurons").screenshot(target)
        print(f"screenshot: {target} ({Path(target).stat().st_size / 1e3:.0f} KB)")


def test_markdown_page_tables_sort(browser, tmp_path):
    """The Markdown pages' report.html (compare, validate, finetune): a click on a title sorts numbers as numbers."""
    from culnig_ext.reporting.markdown_page import write_markdown_page

    (tmp_path / "compare.md").write_text("# Compare\n\n| method | neurons |\n|---|---:|\n| a | 9 |\n| b | 12 |\n"
                                         "| c | −3 |\n| d | – |\n", encoding="utf-8")
    open_page(browser, write_markdown_page(tmp_path, "compare.md"))
    browser.find_element(By.CSS_SELECTOR, "table.sortable th:nth-child(2)").click()
    assert [r[0] for r in cells(browser, "table.sortable tbody tr")] == ["b", "a", "c", "d"]
    browser.find_element(By.CSS_SELECTOR, "table.sortable th:nth-child(2)").click()
    assert [r[0] for r in cells(browser, "table.sortable tbody tr")] == ["c", "a", "b", "d"]
