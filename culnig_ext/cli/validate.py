"""``culnig validate DIR``: how well CULNIG (and its ablations, LAPE, random) recover the neurons ``culnig plant``
planted in DIR; its flags are ``ValidateConfig``'s fields (``culnig_ext.studies.ground_truth_config``)."""
from __future__ import annotations

import argparse

from culnig_ext.cli.common import hf_bars

NAME = "validate"


def add_parser(sub) -> argparse.ArgumentParser:
    from culnig_ext.studies.ground_truth_config import ValidateConfig
    from culnig_ext.studies.options import add_arguments

    p = sub.add_parser(NAME, help="recovery of planted neurons (culnig plant's folder) by every method: "
                                  "precision/recall, AP, AUROC, inhibition, kinship, negative control")
    p.add_argument("planted_dir", metavar="DIR", help="the folder culnig plant wrote")
    add_arguments(p, ValidateConfig)
    return p


def run(args) -> dict:
    from culnig_ext.studies.ground_truth_config import ValidateConfig
    from culnig_ext.studies.option_checks import validate_options
    from culnig_ext.studies.options import build

    cfg = build(ValidateConfig, args)
    validate_options(cfg)  # every number and the output folder, before torch is imported
    from culnig_ext.studies.validate import validate

    with hf_bars(cfg.progress):
        result = validate(args.planted_dir, cfg)
    ranking = result.figures["ranking"]
    lines = [f"validated {args.planted_dir} in {result.timings['total']:.0f} s; AUROC of the planted neurons "
             "(all countries / mean per country):"]
    for method, label in result.figures["methods"].items():
        lines.append(f"  {label:45s} {ranking[method]['general']['auroc']:.3f} / "
                     f"{ranking[method]['specific_mean']['auroc']:.3f}")
    neg = result.figures.get("negative_control")
    if neg:
        lines.append(f"  negative control (base model), CULNIG: {neg['ranking']['culnig']['general']['auroc']:.3f}")
    lines.append(f"report: {result.out / 'validation.md'} (figures: validation.json, sets: sets/)")
    return {"message": "\n".join(lines), "out": str(result.out), "timings": result.timings,
            "auroc": {m: ranking[m]["general"]["auroc"] for m in ranking}}
