"""``culnig compare``: CULNIG's neurons beside LAPE's (activation probability): overlap, layers, inhibition effect
against random sets. Its flags are ``CompareConfig``'s fields."""
from __future__ import annotations

import argparse
from pathlib import Path

from culnig_ext.cli.common import hf_bars

NAME = "compare"


def add_parser(sub) -> argparse.ArgumentParser:
    from culnig_ext.studies.config import CompareConfig
    from culnig_ext.studies.options import add_arguments

    p = sub.add_parser(NAME, help="CULNIG's neurons beside LAPE's (activation probability): overlap, layers, "
                                  "inhibition effect against random sets")
    add_arguments(p, CompareConfig)
    return p


def run(args) -> dict:
    from culnig_ext.studies.config import CompareConfig
    from culnig_ext.studies.option_checks import compare_options
    from culnig_ext.studies.options import build

    cfg = build(CompareConfig, args)
    compare_options(cfg)  # before torch is imported
    from culnig_ext.studies.compare import compare_markdown, run_compare

    with hf_bars(cfg.progress):
        result = run_compare(cfg)
    return {"message": compare_markdown(result) + f"\nwrote {Path(cfg.out) / 'compare.md'}", "compare": result}
