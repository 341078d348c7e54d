"""``culnig report``: (re)write report.md, its plots and report.html from a run folder's results.json."""
from __future__ import annotations

import argparse

NAME = "report"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="(re)write report.md, plots and report.html from a run folder's results.json")
    p.add_argument("run_dir", help="a folder written by 'culnig run' or 'culnig evaluate'")
    p.add_argument("--html", action="store_true", help="only (re)write report.html, the self-contained explorer")
    p.add_argument("--top-n", type=int, default=None,
                   help="neurons outside the sets that report.html's neuron table adds, highest contrast first "
                        "(default 1000)")
    return p


def run(args) -> str:
    from culnig_ext.reporting.explorer import DEFAULT_TOP_N, write_explorer
    from culnig_ext.reporting.report import write_report
    from culnig_ext.studies.option_checks import non_negative_int
    from culnig_ext.studies.preflight import check_report

    top_n = DEFAULT_TOP_N if args.top_n is None else non_negative_int("--top-n", args.top_n)
    results = check_report(args)
    if args.html:
        return f"wrote {write_explorer(args.run_dir, results.to_dict(), top_n=top_n)}"
    md = write_report(args.run_dir, results, top_n=top_n)
    return f"wrote {md}, {md.with_name('report.html')}"
