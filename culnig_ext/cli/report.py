"""``culnig report``: (re)write report.md and plots from a run folder's results.json."""
from __future__ import annotations

import argparse

NAME = "report"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="(re)write report.md and plots from a run folder's results.json")
    p.add_argument("run_dir", help="a folder written by 'culnig run' or 'culnig evaluate'")
    return p


def run(args) -> str:
    from culnig_ext.reporting.report import write_report
    from culnig_ext.studies.preflight import check_report

    return f"wrote {write_report(args.run_dir, check_report(args))}"
