"""``culnig export``: a run folder's neuron sets and score tables as one tidy parquet/CSV table (with a sidecar of
the tables' attributes) or as Neuronpedia-shaped JSON."""
from __future__ import annotations

import argparse

NAME = "export"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="export a run folder's neurons and scores (parquet, CSV or Neuronpedia JSON)")
    p.add_argument("run_dir", help="a folder written by 'culnig run'")
    p.add_argument("--format", required=True, choices=["neuronpedia", "parquet", "csv"],
                   help="parquet/csv: one tidy table (source|site|layer|kind|index|group|score) + <file>.meta.json; "
                        "neuronpedia: features, activations, explanations in Neuronpedia's row shapes")
    p.add_argument("--out", help="output file (default: RUN/export/neurons.<format> or RUN/export/neuronpedia.json)")
    return p


def run(args) -> dict:
    from culnig_ext.reporting.exports import export_run
    from culnig_ext.studies.preflight import check_export

    check_export(args)
    paths = export_run(args.run_dir, args.format, args.out)
    return {"message": "wrote " + ", ".join(str(p) for p in paths), "files": [str(p) for p in paths]}
