"""``culnig evaluate``: accuracy with and without inhibiting a neuron set, against random sets (and lm-eval tasks)."""
from __future__ import annotations

import argparse
from pathlib import Path

from culnig_ext.cli.common import PROTOCOLS, SPLITS, add_format, add_model_args

NAME = "evaluate"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="accuracy with and without inhibiting a neuron set, against random sets")
    add_model_args(p)
    add_format(p)
    p.add_argument("--data", action="append", default=[],
                   help="item source to evaluate (repeat for several sets; or only --lm-eval)")
    p.add_argument("--lm-eval", default=None, metavar="TASKS",
                   help="comma-separated lm-evaluation-harness tasks, run on the model under every condition")
    p.add_argument("--lm-eval-include", default=None, metavar="DIR",
                   help="folder of lm-eval task YAML files (tasks on local data files)")
    p.add_argument("--lm-eval-limit", type=int, default=None, help="documents per lm-eval task (default: all)")
    p.add_argument("--split", default="all", choices=list(SPLITS), help="BLEnD topic split")
    p.add_argument("--inhibit", help="NeuronSet JSON to inhibit (without it: plain evaluation)")
    p.add_argument("--random", type=int, default=0, help="number of random sets (same count per site)")
    p.add_argument("--paper-random", type=int, default=0,
                   help="number of random sets drawn the paper's way (uniform over all neurons pooled)")
    p.add_argument("--protocol", default="ours", choices=list(PROTOCOLS),
                   help="which protocol the items follow (stated in the report); paper: use paper:SOURCE data")
    p.add_argument("--restrict-to-choices", action="store_true",
                   help="letter format: argmax over the option letters instead of the full vocabulary")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sets and option draws")
    p.add_argument("--out", required=True, help="output folder: per-condition records, results.json, report.md")
    return p


def run(args) -> str:
    from culnig_ext.studies.option_checks import evaluate_options

    evaluate_options(args)  # before torch is imported
    from culnig_ext.models.loading import load_model
    from culnig_ext.reporting.report import ReportResults, write_report
    from culnig_ext.studies.preflight import check_evaluate

    inputs = check_evaluate(args)
    neurons = inputs.neurons
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    conditions = _conditions(args, neurons, model)
    rows, verdict = _item_rows(args, model, tokenizer, inputs.sets, conditions)
    if inputs.lm_eval_tasks:
        rows += _lm_eval_rows(args, model, tokenizer, inputs.lm_eval_tasks, conditions)
    res = ReportResults(title=f"Evaluation: {args.model}", model=args.model,
                        neuron_set=args.inhibit or "(none)", n_neurons=len(neurons) if neurons else None,
                        rows=rows, metadata={"protocol": args.protocol, "format": args.format},
                        verdict=verdict.to_dict() if verdict is not None else None)
    report = write_report(Path(args.out), res)
    lines = [f"{r.eval_set}: original {r.original:.3f}, inhibited {r.inhibited:.3f}"
             + (f", random {r.random_mean:.3f}, p={r.p_value:.3g}" if r.random else "") for r in rows]
    return "\n".join(lines + [f"wrote {report}"])


def _conditions(args, neurons, model) -> list:
    """The original model, and with ``--inhibit``: the inhibited set and the random sets."""
    from culnig_ext.selection import culnig as select
    from culnig_ext.studies.conditions import Condition

    conditions = [Condition("original", None)]
    if neurons is None:
        return conditions
    neurons.validate(model)  # again: a GGUF of fused projections shows its layout only once loaded
    conditions.append(Condition("inhibited", neurons))
    conditions += [Condition(f"random{i}", select.random_like(neurons, model, seed=args.seed + i))
                   for i in range(args.random)]
    conditions += [Condition(f"paper_random{i}", select.random_like(neurons, model, seed=args.seed + i,
                                                                     match="none"))
                   for i in range(args.paper_random)]
    return conditions


def _item_rows(args, model, tokenizer, sets, conditions) -> tuple[list, object]:
    """The accuracy rows of the item sets and the specificity verdict (None without sets)."""
    from culnig_ext.data.defaults import is_non_cultural
    from culnig_ext.stats.verdict import from_results as verdict_from_results
    from culnig_ext.studies.conditions import accuracy_rows, evaluate_conditions

    results = (evaluate_conditions(model, tokenizer, sets, conditions, fmt=args.format, batch_size=args.batch_size,
                                   progress=not args.no_progress, save_dir=Path(args.out) / "eval") if sets else {})
    cultural = {name: not is_non_cultural(name) for name in results}
    rows = [row for name, by_cond in results.items()
            for row in accuracy_rows(name, by_cond, "inhibited", cultural=cultural[name], seed=args.seed)]
    verdict = verdict_from_results(results, cultural, inhibited="inhibited", seed=args.seed) if results else None
    return rows, verdict


def _lm_eval_rows(args, model, tokenizer, tasks, conditions) -> list:
    """The accuracy rows of the lm-evaluation-harness tasks (non-cultural)."""
    from culnig_ext.intervention.lmeval import run_lm_eval
    from culnig_ext.studies.conditions import accuracy_rows

    lm = run_lm_eval(model, tokenizer, tasks, conditions, include_path=args.lm_eval_include,
                     limit=args.lm_eval_limit, batch_size=args.batch_size, seed=args.seed)
    return [row for task, by_cond in lm.items()
            for row in accuracy_rows(f"lm-eval: {task} ({next(iter(by_cond.values())).metric})", by_cond,
                                     "inhibited", cultural=False, seed=args.seed)]
