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
import contextlib
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
    p.add_argument("--checkpoint-activations", action="store_true",
                   help="recompute each decoder layer in the backward pass instead of keeping its activations "
                        "(long inputs: far less memory, ~1.3x the time; same scores)")

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
    from .options import add_arguments
    from .pipeline import RunConfig

    p.add_argument("--config", metavar="FILE",
                   help="options from a YAML or JSON file (keys: the option names with underscores, e.g. the "
                        "config.json a run writes); flags given here override it")
    add_arguments(p, RunConfig)
    _add_compare(sub)
    for command in sub.choices.values():  # on every subcommand, after its name: culnig run --json ...
        _add_output_args(command)
    return parser


def _add_output_args(p: argparse.ArgumentParser) -> None:
    from .logs import LEVELS

    p.add_argument("--log-level", default="info", choices=LEVELS,
                   help="messages on stderr from this level up (default: info)")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable JSON summary on stdout instead of the text summary")


def _add_compare(sub) -> None:
    from .compare import CompareConfig
    from .options import add_arguments

    p = sub.add_parser("compare", help="CULNIG's neurons beside LAPE's (activation probability): overlap, layers, "
                                       "inhibition effect against random sets")
    add_arguments(p, CompareConfig)


def _cmd_compare(args) -> dict:
    from .compare import CompareConfig, compare_markdown, run_compare
    from .options import build

    cfg = build(CompareConfig, args)
    with _hf_bars(cfg.progress):
        result = run_compare(cfg)
    return {"message": compare_markdown(result) + f"\nwrote {Path(cfg.out) / 'compare.md'}", "compare": result}


def _cmd_score(args) -> str:
    from .data import encode
    from .models import load_model
    from .preflight import check_score
    from .scorer import score

    items = check_score(args)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    encoded = encode(items, tokenizer, format=args.format, control=args.control)
    clamp = args.clamp_min if args.clamp_min is not None else (0.0 if args.control else None)
    table = score(model, encoded, batch_size=args.batch_size, clamp_min=clamp, progress=not args.no_progress,
                  checkpoint_activations=args.checkpoint_activations)
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


@contextlib.contextmanager
def _hf_bars(enabled: bool):
    """transformers' model-loading bars off while the body runs when ``enabled`` is False, restored after."""
    from transformers.utils import logging as hf_logging

    switch = not enabled and hf_logging.is_progress_bar_enabled()
    if switch:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if switch:
            hf_logging.enable_progress_bar()


def _cmd_run(args) -> dict:
    from .options import build, to_dict
    from .pipeline import RunConfig, run_pipeline

    cfg = build(RunConfig, args, args.config)
    with _hf_bars(cfg.progress):  # progress may come from the config file
        out = run_pipeline(cfg)
    message = "\n".join([
        f"done in {out.timings['total']:.0f} s ({out.format} format). Outputs in {out.run_dir}/:",
        f"  report     {out.report}",
        f"  summary    {out.run_dir / 'summary.md'}",
        f"  neurons    {out.run_dir / 'neurons'}/general.json, specific/<group>.json",
        f"  scores     {out.run_dir / 'scores'}/*.safetensors",
        f"  config     {out.run_dir / 'config.json'} (culnig run --config FILE repeats the run)",
    ])
    return {
        "message": message, "run_dir": str(out.run_dir), "report": str(out.report), "format": out.format,
        "general_neurons": len(out.general), "specific_neurons": {g: len(s) for g, s in out.specific.items()},
        "timings": out.timings, "config": to_dict(cfg),
    }


def _cmd_build(args: argparse.Namespace) -> str:
    from .build import run

    return run(args)


COMMANDS = {"score": _cmd_score, "identify": _cmd_identify, "evaluate": _cmd_evaluate, "report": _cmd_report,
            "run": _cmd_run, "build": _cmd_build, "compare": _cmd_compare}


def _print_result(args, result: str | dict) -> None:
    """The command's result on stdout: its text summary, or with --json one JSON object (``message`` holds the
    text; commands that return more structure add their fields)."""
    data = result if isinstance(result, dict) else {"message": result}
    if getattr(args, "json", False):
        print(json.dumps({"command": args.command, "ok": True, **data}, default=str))
    else:
        print(data["message"])


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
    from . import logs

    log_handler = logs.setup(getattr(args, "log_level", "info"))
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
            result = COMMANDS[args.command](args)
            _print_result(args, result)
    except KeyboardInterrupt as exc:
        out = getattr(args, "out", None) or getattr(args, "run_dir", None)
        print(interrupted_message(args.command, exc, argv, out=out, checkpoint=getattr(args, "checkpoint", None)),
              file=sys.stderr)
        return exit_status(exc)
    # OSError, not only FileNotFoundError: an output path that is a folder, a read-only folder ... are bad input too.
    except (ValueError, KeyError, OSError) as exc:
        line = error_line(args.command, exc)
        print(line, file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"command": args.command, "ok": False, "error": line}))
        return 1
    finally:
        logs.teardown(log_handler)
        if restore_bars is not None:
            restore_bars()
    return 0


if __name__ == "__main__":
    sys.exit(main())
