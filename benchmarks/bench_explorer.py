"""report.html in headless Chromium: the page's size, its load time, and the neuron table's sort and filter times,
on a copy of a run folder (never written into) with the neuron table holding ``--top-n`` others.

    python benchmarks/bench_explorer.py RUN_DIR [--top-n 100000] [--loads 3]
    python benchmarks/bench_explorer.py synthetic --top-n 200000   # 108,544 random neurons, 16 groups (the
                                                                   # results.json of culnig_runs/default)

Needs selenium and Debian's chromium + chromium-driver (as tests/integration/test_browser.py).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def synthetic_run(root: Path, results_from: Path) -> Path:
    """A folder with random score tables of 8 layers x (12800 gate + 3 x 256 q/k/v) = 108,544 neurons and 16
    groups, a general set of 300 neurons, and the results.json of ``results_from``."""
    import torch

    from culnig_ext.scoring.table import ScoreTable
    from culnig_ext.selection.neurons import Neuron, NeuronSet

    root.mkdir(parents=True)
    shutil.copy(results_from / "results.json", root / "results.json")
    groups, g = [f"G{i}" for i in range(16)], torch.Generator().manual_seed(0)
    widths = {}
    for layer in range(8):
        widths[f"layers.{layer}.mlp.gate_proj"] = 12800
        widths.update({f"layers.{layer}.self_attn.{p}_proj": 256 for p in "qkv"})
    for role in ("neur", "ctrl", "crc"):
        sums = {s: torch.rand(16, w, generator=g, dtype=torch.float64) for s, w in widths.items()}
        ScoreTable(groups, [8] * 16, sums, prob_sums=[4.0] * 16, metadata={"model": "synthetic"}).save(
            root / "scores" / f"{role}.safetensors")
    NeuronSet([Neuron("layers.0.mlp.gate_proj", i, 1.0) for i in range(300)], method="general", model="synthetic",
              params={"normalize": "count"}).save(root / "neurons" / "general.json")
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", help="a run folder, or 'synthetic'")
    ap.add_argument("--results-from", default="culnig_runs/default",
                    help="with 'synthetic': the run folder whose results.json the page shows")
    ap.add_argument("--top-n", type=int, default=100_000)
    ap.add_argument("--loads", type=int, default=3)
    args = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from culnig_ext.reporting.report import read_results
    from culnig_ext.reporting.explorer import write_explorer
    from tests.integration.test_browser import CHROMEDRIVER, CHROMIUM, FLAGS

    work = Path(tempfile.mkdtemp(prefix="culnig-bench-explorer-"))
    run = work / "run"
    if args.run_dir == "synthetic":
        synthetic_run(run, Path(args.results_from))
    else:
        shutil.copytree(args.run_dir, run, ignore=shutil.ignore_patterns("eval", "*_parts.safetensors", "export"))
    t = time.perf_counter()
    page = write_explorer(run, read_results(run).to_dict(), top_n=args.top_n)
    build = time.perf_counter() - t
    size = page.stat().st_size
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={work / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        loads = []
        for _ in range(args.loads):
            t = time.perf_counter()
            driver.get(page.as_uri())
            WebDriverWait(driver, 120).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
            loads.append(time.perf_counter() - t)
        rows = driver.find_element(By.ID, "page-info").text

        def timed(action) -> float:
            t = time.perf_counter()
            action()
            driver.execute_script("return 0")  # the click's handler has run once the next script runs
            return time.perf_counter() - t

        sort = timed(lambda: driver.find_element(By.CSS_SELECTOR, "#neuron-table th[data-key='crc']").click())
        def typed():  # the filter runs 150 ms after the last keystroke: wait for the table to change
            before = driver.find_element(By.ID, "page-info").text
            driver.find_element(By.ID, "neuron-filter").send_keys("layers.7.mlp")
            WebDriverWait(driver, 60, poll_frequency=0.01).until(
                lambda d: d.find_element(By.ID, "page-info").text != before)

        filt = timed(typed)
        after = driver.find_element(By.ID, "page-info").text
    finally:
        driver.quit()
        shutil.rmtree(work, ignore_errors=True)
    print(f"page {size / 1e6:.2f} MB written in {build:.1f} s; table: {rows}")
    print(f"ready after {', '.join(f'{x:.2f}' for x in loads)} s (median {statistics.median(loads):.2f} s, "
          f"{args.loads} loads)")
    print(f"sort by CRC: {sort:.2f} s; filter 'layers.7.mlp' (typed, 12 keystrokes): {filt:.2f} s -> {after}")


if __name__ == "__main__":
    main()
