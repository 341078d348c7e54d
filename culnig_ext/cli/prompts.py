"""``culnig prompts``: each item's exact model input (after the chat template) and target, into a .jsonl."""
from __future__ import annotations

import argparse

from culnig_ext.cli.common import PROTOCOLS, SPLITS, add_format

NAME = "prompts"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="write each item's exact model input (after the chat template) and target")
    p.add_argument("--data", required=True, help="item source (any: builtin:cultural, builtin:countryrc, a BLEnD "
                                                  "folder, normad:PATH, paper:countryrc, ...)")
    p.add_argument("--split", default="all", choices=list(SPLITS),
                   help="BLEnD topics, or the paper's neuron/held-out halves under --protocol paper")
    p.add_argument("--protocol", default="ours", choices=list(PROTOCOLS),
                   help="paper: the paper's own prompts for CountryRC, NormAd, CulturalBench, WVB, QNLI, MRPC, CSQA")
    add_format(p)
    p.add_argument("--model", default="smollm2", help="the model whose tokenizer and chat template to use")
    p.add_argument("--seed", type=int, default=0, help="seed of option draws in generated items")
    p.add_argument("--out", required=True, help="output .jsonl (written atomically)")
    return p


def run(args) -> str:
    from culnig_ext.data.model_inputs import write_prompts
    from culnig_ext.models.loading import load_tokenizer
    from culnig_ext.studies.preflight import check_prompts

    items = check_prompts(args)
    n = write_prompts(items, load_tokenizer(args.model), args.out, format=args.format)
    return f"wrote {args.out}: {n} prompts ({args.format} format, protocol {args.protocol})"
