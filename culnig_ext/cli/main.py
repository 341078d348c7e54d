"""The ``culnig`` command: thin subcommands over the Python API (parse, call, print where the outputs went).

    culnig run                       # the whole pipeline on the embedded default (SmolLM2-135M + builtin data)
    culnig score --model M --data D --out scores.safetensors
    torchrun --nproc-per-node K $(which culnig) score --model M --data D --out scores.safetensors
    culnig merge shard0.safetensors shard1.safetensors --out scores.safetensors
    culnig identify general --neur N --ctrl C --crc R --out general.json
    culnig identify specific --neur N --ctrl C --crc R --group US --out us.json
    culnig evaluate --model M --data D --inhibit set.json --random 5 --out eval_dir
    culnig report RUN_DIR            # report.md, plots and report.html (--html: the page only; --top-n N)
    culnig export RUN_DIR --format parquet|csv|neuronpedia   # neurons and scores as one tidy table, or Neuronpedia JSON
    culnig serve RUN_DIR             # report.html on http://127.0.0.1:8000 (the page also opens from file://)
    culnig build                     # compile the fused kernels now (else: on first use, ~1 min, once)
    culnig prompts --data D [--protocol paper] --out prompts.jsonl   # what the model sees, item by item
    culnig overlap A.json B.json [--eval SRC_A --eval SRC_B --model M] --out DIR   # shared neurons, cross-effects
    culnig run --protocol paper      # the paper's prompts, CountryRC items, dtype and random baseline
    culnig compare --max-items 200   # CULNIG's neurons beside LAPE's (activation probability)
    culnig finetune --neurons general.json --end top bottom random --budget 0.1 --task builtin:qnli --out ft_dir
    culnig plant --out planted       # a model with known culture neurons (fictional countries' facts)
    culnig validate planted --out validation   # how well each method recovers them
    culnig run --recipe language     # another study as data: language neurons (docs/recipes.md)
    culnig recipe new my-study       # a commented recipe template; culnig recipe check my-study.yaml
"""
from __future__ import annotations

import argparse
import json
import sys

from culnig_ext._utils.version import __version__
from culnig_ext.cli import (build, compare, evaluate, export, finetune, identify, merge, overlap, plant, prompts,
                            recipe, report, run, score, serve, sweep, validate)
from culnig_ext.cli.common import add_output_args, hide_hf_bars

#: The subcommands in the order ``culnig --help`` lists them; each module has ``NAME``, ``add_parser(subparsers)``
#: and ``run(args)``, which returns the text summary (or a dict with it as ``message``, for ``--json``).
SUBCOMMANDS = (score, merge, identify, evaluate, prompts, overlap, report, export, serve, build, finetune, run, sweep,
               compare, plant, validate, recipe)
COMMANDS = {module.NAME: module.run for module in SUBCOMMANDS}


def build_parser() -> argparse.ArgumentParser:
    """The ``culnig`` parser: every subcommand's, each with ``--log-level`` and ``--json``. Imports no torch."""
    parser = argparse.ArgumentParser(
        prog="culnig", description="Which neurons of an LLM carry cultural understanding? (CULNIG, ICLR 2026)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--version", action="version", version=f"culnig_ext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    for command in sub.choices.values():  # on every subcommand, after its name: culnig run --json ...
        add_output_args(command)
    return parser




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
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from culnig_ext._utils import logs

    log_handler = logs.setup(getattr(args, "log_level", "info"))
    restore_bars = hide_hf_bars(args)
    try:
        return _run(args, argv)
    finally:
        logs.teardown(log_handler)
        if restore_bars is not None:
            restore_bars()


def _run(args, argv: list[str]) -> int:
    """Run the parsed command and print its result; interruptions and bad input become one line on stderr."""
    from culnig_ext._utils.interrupt import exit_status, interrupted_message, signals_as_exceptions
    from culnig_ext.studies.option_checks import error_line

    try:
        # SIGTERM raises like Ctrl-C does: the stack unwinds, finally blocks run (checkpoints, temp files).
        with signals_as_exceptions():
            _print_result(args, COMMANDS[args.command](args))
    except KeyboardInterrupt as exc:
        out = getattr(args, "out", None) or getattr(args, "run_dir", None)
        checkpoint = score.saved_checkpoint(args) if args.command == score.NAME else None
        print(interrupted_message(args.command, exc, argv, out=out, checkpoint=checkpoint), file=sys.stderr)
        return exit_status(exc)
    # OSError, not only FileNotFoundError: an output path that is a folder, a read-only folder ... are bad input too.
    except (ValueError, KeyError, OSError) as exc:
        line = error_line(args.command, exc)
        print(line, file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"command": args.command, "ok": False, "error": line}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
