"""``culnig run``: the whole pipeline (score, identify, inhibit/evaluate, report); its flags are ``RunConfig``'s
fields (``culnig_ext.studies.config``), also the keys of ``--config`` files. On an embedded model it runs the quick
study unless ``--full`` is given (``run_preset``)."""
from __future__ import annotations

import argparse

from culnig_ext.cli.common import hf_bars

NAME = "run"


def add_parser(sub) -> argparse.ArgumentParser:
    from culnig_ext.studies.config import QUICK_PRESET, RunConfig
    from culnig_ext.studies.options import add_arguments, flag_for

    quick = ", ".join(f"{flag_for(RunConfig, k)} {'none' if v is None else v}" for k, v in QUICK_PRESET.items()
                      if k != "full")
    p = sub.add_parser(NAME, help="the whole pipeline: score, identify, inhibit/evaluate, report (on an embedded "
                                  "model the quick study, ~10 min on 2 CPU cores; --full: the research size)",
                       epilog=f"The defaults shown are the research-size study (--full). On an embedded model without "
                              f"--full the quick study replaces them: {quick}. Options given explicitly win.")
    p.add_argument("--config", metavar="FILE",
                   help="options from a YAML or JSON file (keys: the option names with underscores, e.g. the "
                        "config.json a run writes); flags given here override it")
    add_arguments(p, RunConfig)
    return p


def run(args) -> dict:
    from culnig_ext.studies.config import RunConfig, run_preset
    from culnig_ext.studies.option_checks import run_options
    from culnig_ext.studies.options import build

    cfg = build(RunConfig, args, args.config, preset=run_preset)
    run_options(cfg)  # every number and the run folder, before torch is imported
    from culnig_ext.reporting.summary import main_row, next_commands, row_dict, run_summary
    from culnig_ext.studies.pipeline import run_pipeline

    with hf_bars(cfg.progress):  # progress may come from the config file
        out = run_pipeline(cfg)
    specific = {g: len(s) for g, s in out.specific.items()}
    paths = {"report": str(out.report), "explorer": f"{out.run_dir / 'report.html'} (one self-contained page)",
             "summary": str(out.run_dir / "summary.md"),
             "neurons": f"{out.run_dir / 'neurons'}/general.json, specific/<group>.json",
             "scores": f"{out.run_dir / 'scores'}/*.safetensors",
             "config": f"{out.run_dir / 'config.json'} (culnig run --config FILE repeats the run)"}
    if cfg.finetune:
        paths["finetune"] = f"{out.run_dir / 'finetune'}/finetune.md"
    commands = next_commands(out.run_dir, full=cfg.full)
    message = run_summary(out.results, seconds=out.timings["total"], specific=specific, run_dir=out.run_dir,
                          paths=paths, next_commands=commands,
                          how=f"{out.plan.size} study, {out.format} format, protocol {cfg.protocol}")
    return {
        "message": message, "run_dir": str(out.run_dir), "report": str(out.report), "format": out.format,
        "general_neurons": len(out.general), "specific_neurons": specific, "verdict": out.results.verdict,
        "main_row": row_dict(main_row(out.results)), "plan": out.plan.to_dict(),
        "next_commands": [command for command, _ in commands], "timings": out.timings, "config": out.config,
    }
