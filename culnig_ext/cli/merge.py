"""``culnig merge``: add up score tables of disjoint items (shards) into one."""
from __future__ import annotations

import argparse

NAME = "merge"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="add up score tables of disjoint items (shards) into one")
    p.add_argument("tables", nargs="+", help="score tables (.safetensors) of the same model, sites, dtype, clamp")
    p.add_argument("--out", required=True, help="output .safetensors file (written atomically)")
    return p


def run(args) -> str:
    from culnig_ext.scoring.table import ScoreTable
    from culnig_ext.studies.preflight import check_merge

    tables = check_merge(args)
    merged = ScoreTable.merge(tables, names=args.tables)
    merged.save(args.out)
    return f"wrote {args.out}: {merged} from {len(tables)} tables"
