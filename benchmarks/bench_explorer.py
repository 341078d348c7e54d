"""report.html in headless Chromium: the page's size, its load time, and the neuron table's sort and filter times,
on a copy of a run folder (never written into) with the neuron table holding ``--top-n`` others.

    python benchmarks/bench_explorer.py RUN_DIR [--top-n 100000] [--loads 3]

Needs selenium and Debian's chromium + chromium-driver (as tests/integration/test_browser.py).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
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
        filt = timed(lambda: driver.find_element(By.ID, "neuron-filter").send_keys("layers.7.mlp"))
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
