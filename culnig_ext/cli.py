"""The ``culnig`` command: thin subcommands over the Python API (parse, call, print where the outputs went).

    culnig run                       # the whole pipeline on the embedded default (SmolLM2-135M + builtin data)
    culnig score --model M --data D --out scores.safetensors
    culnig identify general --neur N --ctrl C --crc R --out general.json
    culnig identify specific --neur N --ctrl C --crc R --group US --out us.json
    culnig evaluate --model M --data D --inhibit set.json --random 5 --out eval_dir
    culnig report RUN_DIR
    culnig build                     # compile the fused kernels now (else: on first use, ~1 min, once)
    culnig compare --max-items 200   # CULNIG's neurons beside LAPE's (activation probability)
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from . import __version__

FORMATS = ("letter", "cloze")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2",
                   help="embedded alias (smollm2, gemma3-270m), a .gguf file, a local model folder or a hub id "
                        "(default: smollm2)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype (default: float32)")
    p.add_argument("--device", default=None, help="device for the whole model, e.g. cuda:0 (default: cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="items per forward/backward pass (default: 16)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _add_format(p: argparse.ArgumentParser, default: str = "letter") -> None:
    p.add_argument("--format", default=default, choices=FORMATS + (("auto",) if default == "auto" else ()),
                   help="letter: the next token is the option letter (instruction-tuned models); cloze: the target "
                        "is the option's text, scored by likelihood (small models) (default: %(default)s)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="culnig", description="Which neurons of an LLM carry cultural understanding? (CULNIG, ICLR 2026)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--version", action="version", version=f"culnig_ext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("score", help="score every neuron over a data set into a safetensors table")
    _add_model_args(p)
    _add_format(p)
    p.add_argument("--data", required=True, help="item source: builtin:cultural, a .jsonl, a BLEnD folder, ...")
    p.add_argument("--split", default="all", choices=["neur", "test", "all"],
                   help="BLEnD topic split: neur (Food, Work life, Sport), test (the other three), all")
    p.add_argument("--control", nargs="?", const="empty", default=None, choices=["empty", "frame"],
                   help="score the control variant of the items: 'empty' removes the question (the paper's "
                        "BLEnD_ctrl), 'frame' keeps a content-free question; clamps item scores at 0")
    p.add_argument("--clamp-min", type=float, default=None, help="clamp each item's max at this value")
    p.add_argument("--seed", type=int, default=0, help="seed of option draws in generated items")
    p.add_argument("--out", required=True, help="output .safetensors file (written atomically)")

    p = sub.add_parser("identify", help="select culture-general or culture-specific neurons from score tables")
    kind = p.add_subparsers(dest="which", metavar="general|specific")
    for name in ("general", "specific"):
        q = kind.add_parser(name, help=f"culture-{name} neurons")
        q.add_argument("--neur", required=True, help="score table of the cultural items")
        q.add_argument("--ctrl", help="score table of the control items (subtracted)")
        q.add_argument("--crc", help="score table of CountryRC items (its top neurons are removed)")
        q.add_argument("--normalize", default=None, choices=["count", "prob", "none", "total"],
                       help="divide scores by item counts (paper), summed P ('prob'), or nothing")
        q.add_argument("--out", required=True, help="output NeuronSet JSON (or folder with --all-groups)")
        if name == "general":
            q.add_argument("--contrast", help="an extra score table subtracted like ctrl (general-ability set)")
            q.add_argument("--t-mlp", type=float, default=0.01, help="top fraction of MLP gate neurons (0.01)")
            q.add_argument("--t-attn", type=float, default=0.002, help="top fraction of q/k/v neurons (0.002)")
            q.add_argument("--r-mlp", type=float, default=0.01, help="CountryRC removal fraction, MLP (0.01)")
            q.add_argument("--r-attn", type=float, default=0.01, help="CountryRC removal fraction, q/k/v (0.01)")
        else:
            q.add_argument("--group", help="target group (country); or --all-groups")
            q.add_argument("--all-groups", action="store_true", help="one file per group into the --out folder")
            q.add_argument("--t", type=float, default=0.003, help="top fraction of all neurons (0.003)")
            q.add_argument("--r", type=float, default=0.01, help="CountryRC removal fraction (0.01)")
            q.add_argument("--z-min", type=float, default=0.5, help="minimum z-score across groups (0.5)")

    p = sub.add_parser("evaluate", help="accuracy with and without inhibiting a neuron set, against random sets")
    _add_model_args(p)
    _add_format(p)
    p.add_argument("--data", required=True, action="append",
                   help="item source to evaluate (repeat for several sets)")
    p.add_argument("--split", default="all", choices=["neur", "test", "all"], help="BLEnD topic split")
    p.add_argument("--inhibit", help="NeuronSet JSON to inhibit (without it: plain evaluation)")
    p.add_argument("--random", type=int, default=0, help="number of random sets (same count per site)")
    p.add_argument("--restrict-to-choices", action="store_true",
                   help="letter format: argmax over the option letters instead of the full vocabulary")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sets and option draws")
    p.add_argument("--out", required=True, help="output folder: per-condition records, results.json, report.md")

    p = sub.add_parser("report", help="(re)write report.md and plots from a run folder's results.json")
    p.add_argument("run_dir", help="a folder written by 'culnig run' or 'culnig evaluate'")

    p = sub.add_parser("build", help="compile the fused C++/CUDA kernels now (else on first use), check, cache")
    from .build import add_arguments as add_build_arguments

    add_build_arguments(p)

    p = sub.add_parser("run", help="the whole pipeline: score, identify, inhibit/evaluate, report")
    from .pipeline import RunConfig

    defaults = RunConfig()
    p.add_argument("--out", default=defaults.out, help="run folder (default: %(default)s); re-running resumes")
    p.add_argument("--model", default=defaults.model, help="model (default: the embedded smollm2)")
    p.add_argument("--data", default=defaults.data, help="cultural item source (default: %(default)s)")
    p.add_argument("--crc", default=defaults.crc, help="CountryRC scoring templates (default: %(default)s)")
    p.add_argument("--crc-test", default=defaults.crc_test, help="CountryRC evaluation templates")
    p.add_argument("--general", default=defaults.general, help="non-cultural set for specificity ('' to skip)")
    _add_format(p, default="auto")
    p.add_argument("--control", default=defaults.control, choices=["empty", "frame"],
                   help="control prompt: empty (question removed, paper) or frame (keeps the question frame)")
    p.add_argument("--normalize", default=defaults.normalize, choices=["count", "prob"],
                   help="divide by item counts (paper) or by summed P (sets answered with different confidence)")
    p.add_argument("--contrast-general", action="store_true",
                   help="also subtract a general-ability table (half of --general; the other half is evaluated)")
    for name, help_text in (("t_mlp", "top fraction of MLP gate neurons"), ("t_attn", "top fraction of q/k/v neurons"),
                            ("r_mlp", "CountryRC removal fraction, MLP"), ("r_attn", "CountryRC removal fraction, q/k/v"),
                            ("t_specific", "top fraction for culture-specific neurons"),
                            ("r_specific", "CountryRC removal fraction for culture-specific neurons"),
                            ("z_min", "minimum z-score of a culture-specific neuron")):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name),
                       help=f"{help_text} (default: %(default)s, the paper's)")
    p.add_argument("--random", type=int, default=defaults.n_random, help="random sets (default: %(default)s)")
    p.add_argument("--no-kinship", action="store_true", help="skip the kinship matrix")
    p.add_argument("--max-test-items", type=int, default=defaults.max_test_items,
                   help="cap per evaluation set (seeded sample; default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--dtype", default=defaults.dtype, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_compare(sub)
    return parser


def _add_compare(sub) -> None:
    from .compare import CompareConfig
    from .options import add_arguments

    p = sub.add_parser("compare", help="CULNIG's neurons beside LAPE's (activation probability): overlap, layers, "
                                       "inhibition effect against random sets")
    add_arguments(p, CompareConfig)


def _cmd_compare(args) -> str:
    from .compare import CompareConfig, compare_markdown, run_compare
    from .options import build

    cfg = build(CompareConfig, args)
    return compare_markdown(run_compare(cfg)) + f"\nwrote {Path(cfg.out) / 'compare.md'}"


def _cmd_score(args) -> str:
    from .data import encode
    from .models import load_model
    from .preflight import check_score
    from .scorer import score

    items = check_score(args)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    encoded = encode(items, tokenizer, format=args.format, control=args.control)
    clamp = args.clamp_min if args.clamp_min is not None else (0.0 if args.control else None)
    table = score(model, encoded, batch_size=args.batch_size, clamp_min=clamp, progress=not args.no_progress)
    table.save(args.out)
    return f"wrote {args.out}: {table}"


def _cmd_identify(args) -> str:
    from . import select
    from .pipeline import slug
    from .preflight import check_identify

    tables = check_identify(args)
    neur, ctrl, crc = tables.neur, tables.ctrl, tables.crc
    if args.which == "general":
        ns = select.general(neur, ctrl, crc, args.t_mlp, args.t_attn, args.r_mlp, args.r_attn,
                            normalize=args.normalize or "count", contrast=tables.contrast)
        ns.save(args.out)
        return f"wrote {args.out}: {len(ns)} culture-general neurons {ns.counts_by_kind()}"
    groups = neur.groups if args.all_groups else [args.group]
    written = []
    for group in groups:
        ns = select.specific(neur, ctrl, crc, group, args.t, args.r, args.z_min, normalize=args.normalize or "total")
        path = Path(args.out) / f"{slug(group)}.json" if args.all_groups else Path(args.out)
        ns.save(path)
        written.append(f"{group}: {len(ns)}")
    return f"wrote {args.out}: culture-specific neurons " + ", ".join(written)


def _cmd_evaluate(args) -> str:
    from . import select
    from .models import load_model
    from .pipeline import Condition, evaluate_conditions
    from .preflight import check_evaluate
    from .report import ReportResults, accuracy_row, write_report

    inputs = check_evaluate(args)
    sets, neurons = inputs.sets, inputs.neurons
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    conditions = [Condition("original", None)]
    if neurons is not None:
        neurons.validate(model)  # again: a GGUF of fused projections shows its layout only once loaded
        conditions.append(Condition("inhibited", neurons))
        conditions += [Condition(f"random{i}", select.random_like(neurons, model, seed=args.seed + i))
                       for i in range(args.random)]
    out = Path(args.out)
    results = evaluate_conditions(model, tokenizer, sets, conditions, fmt=args.format, batch_size=args.batch_size,
                                  progress=not args.no_progress, save_dir=out / "eval")
    rows = []
    for name, by_cond in results.items():
        randoms = [r for c, r in by_cond.items() if c.startswith("random")]
        inhibited = by_cond.get("inhibited", by_cond["original"])
        rows.append(accuracy_row(name, by_cond["original"], inhibited, randoms, seed=args.seed))
    res = ReportResults(title=f"Evaluation: {args.model}", model=args.model,
                        neuron_set=args.inhibit or "(none)", n_neurons=len(neurons) if neurons else None,
                        rows=rows, metadata={"format": args.format})
    report = write_report(out, res)
    lines = [f"{r.eval_set}: original {r.original:.3f}, inhibited {r.inhibited:.3f}"
             + (f", random {r.random_mean:.3f}, p={r.p_value:.3g}" if r.random else "") for r in rows]
    return "\n".join(lines + [f"wrote {report}"])


def _cmd_report(args) -> str:
    from .preflight import check_report
    from .report import write_report

    return f"wrote {write_report(args.run_dir, check_report(args))}"


def _cmd_run(args) -> str:
    from .pipeline import RunConfig, run_pipeline

    cfg = RunConfig(
        out=args.out, model=args.model, data=args.data, crc=args.crc, crc_test=args.crc_test,
        general=args.general or None, format=args.format, control=args.control, normalize=args.normalize,
        contrast_general=args.contrast_general, n_random=args.random, kinship=not args.no_kinship,
        max_test_items=args.max_test_items, batch_size=args.batch_size, dtype=args.dtype, device=args.device,
        t_mlp=args.t_mlp, t_attn=args.t_attn, r_mlp=args.r_mlp, r_attn=args.r_attn, t_specific=args.t_specific,
        r_specific=args.r_specific, z_min=args.z_min,
        seed=args.seed, progress=not args.no_progress,
    )
    out = run_pipeline(cfg)
    return "\n".join([
        f"[culnig] done in {out.timings['total']:.0f} s ({out.format} format). Outputs in {out.run_dir}/:",
        f"  report     {out.report}",
        f"  summary    {out.run_dir / 'summary.md'}",
        f"  neurons    {out.run_dir / 'neurons'}/general.json, specific/<group>.json",
        f"  scores     {out.run_dir / 'scores'}/*.safetensors",
    ])


def _cmd_build(args: argparse.Namespace) -> str:
    from .build import run

    return run(args)


COMMANDS = {"score": _cmd_score, "identify": _cmd_identify, "evaluate": _cmd_evaluate, "report": _cmd_report,
            "run": _cmd_run, "build": _cmd_build, "compare": _cmd_compare}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``culnig``; returns the exit code: 0 done, 1 bad input or failed (one line on stderr naming
    the file, line, field or option), 2 usage error, 130 interrupted by SIGINT, 143 by SIGTERM (README: Exit
    codes)."""
    from .interrupt import exit_status, interrupted_message, signals_as_exceptions
    from .preflight import error_line

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    restore_bars = None
    if getattr(args, "no_progress", False) or getattr(args, "progress", True) is False:
        # --no-progress hides transformers' model-loading bars too (they would bury a one-line error on stderr).
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            restore_bars = hf_logging.enable_progress_bar
    try:
        # SIGTERM raises like Ctrl-C does: the stack unwinds, finally blocks run (checkpoints, temp files).
        with signals_as_exceptions():
            print(COMMANDS[args.command](args))
    except KeyboardInterrupt as exc:
        out = getattr(args, "out", None) or getattr(args, "run_dir", None)
        print(interrupted_message(args.command, exc, argv, out=out, checkpoint=getattr(args, "checkpoint", None)),
              file=sys.stderr)
        return exit_status(exc)
    # OSError, not only FileNotFoundError: an output path that is a folder, a read-only folder ... are bad input too.
    except (ValueError, KeyError, OSError) as exc:
        print(error_line(args.command, exc), file=sys.stderr)
        return 1
    finally:
        if restore_bars is not None:
            restore_bars()
    return 0


if __name__ == "__main__":
    sys.exit(main())
