"""``culnig overlap``: overlap of neuron sets (counts, Jaccard, per layer) and the cross-effects of inhibiting each
on the others' evaluation sets."""
from __future__ import annotations

import argparse

from culnig_ext.cli.common import FORMATS, PROTOCOLS, SPLITS, add_model_args

NAME = "overlap"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="overlap of neuron sets (counts, Jaccard, per layer) and the cross-effects "
                                  "of inhibiting each on the others' evaluation sets")
    add_model_args(p)
    p.add_argument("sets", nargs="+", help="neuron-set JSON files (culnig identify), at least 2")
    p.add_argument("--eval", action="append", default=[],
                   help="evaluation source of each set, in the same order (repeat; omit for overlap counts only)")
    p.add_argument("--split", default="test", choices=list(SPLITS),
                   help="split of the evaluation sources (default: test, the held-out halves)")
    p.add_argument("--protocol", default="ours", choices=list(PROTOCOLS),
                   help="paper: the evaluation sources are read with the paper's prompts (paper:NAME:PATH)")
    p.add_argument("--format", default="letter", choices=list(FORMATS), help="answer format (default: letter)")
    p.add_argument("--seed", type=int, default=0, help="seed of option draws in generated items")
    p.add_argument("--out", required=True, help="output folder: overlap.json, overlap.md, overlap.png")
    return p


def run(args) -> str:
    from culnig_ext.studies.option_checks import overlap_options

    overlap_options(args)  # before torch is imported
    from culnig_ext.studies.overlap import cross_effects, overlap_stats, write_overlap
    from culnig_ext.studies.preflight import check_overlap

    inputs = check_overlap(args)
    stats = overlap_stats(inputs.sets)
    effects = None
    if inputs.eval_sets is not None:
        from culnig_ext.models.loading import load_model

        model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
        effects = cross_effects(model, tokenizer, inputs.sets, inputs.eval_sets, fmt=args.format,
                                batch_size=args.batch_size, progress=not args.no_progress)
    return f"wrote {write_overlap(args.out, stats, effects)}"
