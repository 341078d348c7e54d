"""``culnig plant``: a model with known culture neurons (a synthetic world's facts trained into chosen MLP gate
neurons only); its flags are ``PlantConfig``'s fields (``culnig_ext.studies.ground_truth_config``)."""
from __future__ import annotations

import argparse

from culnig_ext.cli.common import hf_bars

NAME = "plant"


def add_parser(sub) -> argparse.ArgumentParser:
    from culnig_ext.studies.ground_truth_config import PlantConfig
    from culnig_ext.studies.options import add_arguments

    p = sub.add_parser(NAME, help="plant known culture neurons: train only chosen MLP gate neurons on the facts of "
                                  "fictional countries (ground truth for culnig validate)")
    add_arguments(p, PlantConfig)
    return p


def run(args) -> dict:
    from culnig_ext.studies.ground_truth_config import PlantConfig
    from culnig_ext.studies.option_checks import plant_options
    from culnig_ext.studies.options import build

    cfg = build(PlantConfig, args)
    plant_options(cfg)  # every number and the output folder, before torch is imported
    from culnig_ext.studies.plant import plant

    with hf_bars(cfg.progress):
        result = plant(cfg)
    gt = result.ground_truth
    before, after = gt["accuracy_before"]["accuracy"], gt["accuracy_after"]["accuracy"]
    message = "\n".join([
        f"planted {len(gt['neurons'])} countries x {cfg.neurons_per_country} neurons in {result.timings['total']:.0f} s:"
        f" held-out accuracy {before:.1%} -> {after:.1%}"
        + ("" if gt["reached_target"] else f" (below the target {cfg.target_accuracy:.0%})"),
        f"  bit-identity: {gt['check']['entries_changed']} of {gt['check']['entries_allowed']} planted entries "
        f"changed, {gt['check']['untouched_parameters']} other parameters unchanged",
        f"  model        {result.out / 'model'}",
        f"  ground truth {result.out / 'planted.json'}",
        f"  data         {result.out / 'data'}/*.jsonl",
        f"next: culnig validate {result.out} --out OUT",
    ])
    return {"message": message, "out": str(result.out), "accuracy_before": before, "accuracy_after": after,
            "reached_target": gt["reached_target"], "check": gt["check"], "timings": result.timings}
