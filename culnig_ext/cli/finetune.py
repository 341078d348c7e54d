"""``culnig finetune``: the module study; fine-tune the blocks with the most / fewest culture neurons (or random
ones) and measure the target-task gain and the cultural loss.

The study's flags (``--end``, ``--budget``, ... ``--max-train-items``) are generated from their one declaration,
``culnig_ext.studies.finetune.settings`` (``culnig run`` takes the same options as ``--finetune-*``)."""
from __future__ import annotations

import argparse
import typing
from pathlib import Path

from culnig_ext.cli.common import add_format, add_model_args

NAME = "finetune"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="module study: fine-tune the blocks with the most / fewest culture "
                                  "neurons (or random ones) and measure target gain and cultural loss")
    add_model_args(p)
    add_format(p, default="auto")
    p.add_argument("--neurons", required=True, help="NeuronSet JSON ranking the blocks (e.g. general.json)")
    add_study_args(p)
    p.add_argument("--data", default="builtin:cultural", help="cultural set; its test split is evaluated")
    p.add_argument("--crc-test", default="builtin:countryrc-test", help="CountryRC evaluation set")
    p.add_argument("--general", default="builtin:general", help="non-cultural set ('' to skip)")
    p.add_argument("--max-test-items", type=int, default=120, help="cap per evaluation set (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of picks' ties, data order, LoRA init, samples")
    p.add_argument("--out", required=True, help="output folder: ranking, per-item records, finetune.md")
    return p


def add_study_args(p: argparse.ArgumentParser) -> None:
    """One flag per study option (``study_options``): a list option takes several values, a boolean is a switch,
    the help ends with the default (in words where None stands for one)."""
    from culnig_ext.studies.finetune.settings import study_options
    from culnig_ext.studies.options import flag_of, option_meta

    for f, kind, optional in study_options():
        meta = option_meta(f)
        flag, text, default = flag_of(f), meta["help"].replace("%", "%%"), f.default
        if kind is bool:
            p.add_argument(flag, action="store_true", help=text)
        elif typing.get_origin(kind) is tuple:
            p.add_argument(flag, nargs="+", default=list(default), choices=list(meta["choices"]),
                           help=f"{text} (default: {' '.join(default)})")
        else:
            shown = meta["none"] if default is None and meta["none"] else default
            choices = list(meta["choices"]) if meta["choices"] else None
            p.add_argument(flag, type=None if kind is str else kind, default=default, choices=choices,
                           help=f"{text} (default: {shown})")


def run(args) -> str:
    from culnig_ext.studies.finetune.report import REPORT_FILE
    from culnig_ext.studies.finetune.settings import settings_from, task_from
    from culnig_ext.studies.finetune.study import FinetuneConfig, run_finetune

    settings = settings_from(args, seed=args.seed, eval_batch_size=args.batch_size, progress=not args.no_progress)
    cfg = FinetuneConfig(
        neurons=args.neurons, out=args.out, model=args.model, **task_from(args),
        max_test_items=args.max_test_items, data=args.data, crc_test=args.crc_test, general=args.general or None,
        format=args.format, dtype=args.dtype, device=args.device, settings=settings)
    results = run_finetune(cfg)
    lines = [f"{e['end']}: target gain {100 * e['target_gain']['diff']:+.2f} pp; drops "
             + ", ".join(f"{n} {100 * d['diff']:+.2f} pp" for n, d in e["drops"].items()) for e in results["ends"]]
    return "\n".join(lines + [f"wrote {Path(args.out) / REPORT_FILE}"])
