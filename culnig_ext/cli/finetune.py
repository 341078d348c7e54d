"""``culnig finetune``: the module study; fine-tune the blocks with the most / fewest culture neurons (or random
ones) and measure the target-task gain and the cultural loss."""
from __future__ import annotations

import argparse
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
    """The module study's options (``culnig run`` has them as ``--finetune-*``, from ``RunConfig``)."""
    from culnig_ext.studies.finetune.settings import StudySettings

    d = StudySettings()
    p.add_argument("--end", nargs="+", default=list(d.ends), choices=["top", "bottom", "random"],
                   help="which ends to train, each from the same start (default: top bottom random)")
    p.add_argument("--budget", type=float, default=d.budget,
                   help="share of the decoder layers' parameters to train (default: %(default)s, the paper's)")
    p.add_argument("--by", default=d.by, choices=["count", "density"],
                   help="rank blocks by neuron count (paper) or count per neuron of the block (default: count)")
    p.add_argument("--task", default="builtin:qnli",
                   help="target task: builtin:qnli, qnli, mrpc (hub), qnli:PATH, mrpc:PATH (default: %(default)s)")
    p.add_argument("--task-test", default=None,
                   help="target task's test items (default: the task's test split; needed for a local file)")
    p.add_argument("--lora", action="store_true", help="LoRA (r=32, alpha=64) on the picked modules")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="constant AdamW lr (default: %(default)s)")
    p.add_argument("--train-batch-size", type=int, default=d.batch_size,
                   help="training items per forward/backward (default: %(default)s)")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help="batches per optimizer step (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--max-train-items", type=int, default=None,
                   help="seeded sample of the training items (default: all)")


def run(args) -> str:
    from culnig_ext.studies.finetune.report import REPORT_FILE
    from culnig_ext.studies.finetune.settings import StudySettings
    from culnig_ext.studies.finetune.study import FinetuneConfig, run_finetune

    settings = StudySettings(ends=tuple(args.end), budget=args.budget, by=args.by, lora=args.lora,
                             epochs=args.epochs, lr=args.lr, batch_size=args.train_batch_size,
                             grad_accum=args.grad_accum, max_steps=args.max_steps, seed=args.seed,
                             eval_batch_size=args.batch_size, progress=not args.no_progress)
    cfg = FinetuneConfig(
        neurons=args.neurons, out=args.out, model=args.model, task=args.task, task_test=args.task_test,
        max_train_items=args.max_train_items, max_test_items=args.max_test_items, data=args.data,
        crc_test=args.crc_test, general=args.general or None, format=args.format, dtype=args.dtype,
        device=args.device, settings=settings)
    results = run_finetune(cfg)
    lines = [f"{e['end']}: target gain {100 * e['target_gain']['diff']:+.2f} pp; drops "
             + ", ".join(f"{n} {100 * d['diff']:+.2f} pp" for n, d in e["drops"].items()) for e in results["ends"]]
    return "\n".join(lines + [f"wrote {Path(args.out) / REPORT_FILE}"])
