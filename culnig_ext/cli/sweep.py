"""``culnig sweep``: choose the identification settings on a validation split, report them on the test split."""
from __future__ import annotations

import argparse

from culnig_ext.cli.common import DTYPES, FORMATS, parse_csv

NAME = "sweep"


def add_parser(sub) -> argparse.ArgumentParser:
    from culnig_ext.studies.config import SweepConfig

    sd = SweepConfig()
    p = sub.add_parser(NAME, help="choose identification settings on a validation split, report on the test split")
    p.add_argument("--out", default=sd.out, help="output folder (default: %(default)s)")
    p.add_argument("--model", default=sd.model, help="model (default: the embedded smollm2)")
    p.add_argument("--recipe", default=sd.recipe, help="the study's recipe (a builtin name or a file): the defaults "
                                                        "of --data, --crc, --crc-test, --general (default: %(default)s)")
    p.add_argument("--data", default=None, help="cultural item source (default: the recipe's; culture: auto, as for "
                                                "'culnig run')")
    p.add_argument("--crc", default=None, help="surface (CountryRC) scoring templates (default: the recipe's; auto)")
    p.add_argument("--crc-test", default=None, help="surface evaluation templates (default: the recipe's; auto)")
    p.add_argument("--general", default=None, help="non-cultural set: contrast/validation/test thirds (default: the "
                                                   "recipe's)")
    p.add_argument("--format", default=sd.format, choices=FORMATS, help="answer format (default: %(default)s)")
    _add_grid(p, sd)
    p.add_argument("--random", type=int, default=sd.n_random,
                   help="random sets on the test split (default: %(default)s)")
    p.add_argument("--max-scoring-items", type=int, default=sd.max_scoring_items, help="default: %(default)s")
    p.add_argument("--max-val-items", type=int, default=sd.max_val_items, help="default: %(default)s")
    p.add_argument("--max-test-items", type=int, default=sd.max_test_items, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=sd.batch_size)
    p.add_argument("--dtype", default=sd.dtype, choices=list(DTYPES))
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=sd.seed)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def _add_grid(p: argparse.ArgumentParser, sd) -> None:
    """The grid's axes, each a comma-separated list."""
    p.add_argument("--normalize", default=",".join(sd.normalize), help="grid: normalisations (default: %(default)s)")
    p.add_argument("--control", default=",".join(sd.control), help="grid: control prompts (default: %(default)s)")
    p.add_argument("--contrast-general", default=",".join("on" if x else "off" for x in sd.contrast_general),
                   help="grid: general-ability contrast off/on (default: %(default)s)")
    p.add_argument("--scale", default=",".join(f"{x:g}" for x in sd.scale),
                   help="grid: factors on the paper's top fractions t_mlp/t_attn (default: %(default)s)")


def run(args) -> str:
    from culnig_ext.studies.config import SweepConfig
    from culnig_ext.studies.option_checks import sweep_options

    try:
        scale = tuple(float(x) for x in parse_csv(args.scale, "--scale"))
    except ValueError as exc:
        raise ValueError(f"--scale: expected numbers, got {args.scale!r} ({exc})") from None
    from culnig_ext.studies.recipes.load import recipe_sources

    sources = recipe_sources(args.recipe, data=args.data, crc=args.crc, crc_test=args.crc_test, general=args.general)
    cfg = SweepConfig(
        out=args.out, model=args.model, recipe=args.recipe, **sources,
        format=args.format, normalize=parse_csv(args.normalize, "--normalize", ("count", "prob")),
        control=parse_csv(args.control, "--control", ("empty", "frame")),
        contrast_general=tuple(v == "on" for v in parse_csv(args.contrast_general, "--contrast-general",
                                                             ("off", "on"))),
        scale=scale, n_random=args.random, max_scoring_items=args.max_scoring_items,
        max_val_items=args.max_val_items, max_test_items=args.max_test_items, batch_size=args.batch_size,
        dtype=args.dtype, device=args.device, seed=args.seed, progress=not args.no_progress,
    )
    sweep_options(cfg)  # before torch is imported
    from culnig_ext.studies.sweep import run_sweep

    out = run_sweep(cfg)
    return (f"[culnig] sweep done in {out.timings['total']:.0f} s; chosen on validation data: {out.chosen.name}\n"
            f"  report     {out.report}")
