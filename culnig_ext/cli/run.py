"""``culnig run``: the whole pipeline (score, identify, inhibit/evaluate, report); its flags are ``RunConfig``'s
fields (``culnig_ext.studies.config``), also the keys of ``--config`` files."""
from __future__ import annotations

import argparse

from culnig_ext.cli.common import hf_bars

NAME = "run"


def add_parser(sub) -> argparse.ArgumentParser:
    from culnig_ext.studies.config import RunConfig
    from culnig_ext.studies.options import add_arguments

    p = sub.add_parser(NAME, help="the whole pipeline: score, identify, inhibit/evaluate, report")
    p.add_argument("--config", metavar="FILE",
                   help="options from a YAML or JSON file (keys: the option names with underscores, e.g. the "
                        "config.json a run writes); flags given here override it")
    add_arguments(p, RunConfig)
    return p


def run(args) -> dict:
    from culnig_ext.studies.options import build, to_dict
    from culnig_ext.studies.pipeline import RunConfig, run_pipeline, run_preset

    cfg = build(RunConfig, args, args.config, preset=run_preset)
    with hf_bars(cfg.progress):  # progress may come from the config file
        out = run_pipeline(cfg)
    message = "\n".join([
        f"done in {out.timings['total']:.0f} s ({out.format} format, protocol {cfg.protocol}). "
        f"Outputs in {out.run_dir}/:",
        f"  report     {out.report}",
        f"  summary    {out.run_dir / 'summary.md'}",
        f"  neurons    {out.run_dir / 'neurons'}/general.json, specific/<group>.json",
        f"  scores     {out.run_dir / 'scores'}/*.safetensors",
        f"  config     {out.run_dir / 'config.json'} (culnig run --config FILE repeats the run)",
    ] + ([f"  finetune   {out.run_dir / 'finetune'}/finetune.md"] if cfg.finetune else []))
    return {
        "message": message, "run_dir": str(out.run_dir), "report": str(out.report), "format": out.format,
        "general_neurons": len(out.general), "specific_neurons": {g: len(s) for g, s in out.specific.items()},
        "timings": out.timings, "config": to_dict(cfg),
    }
