"""The ``culnig`` command: thin subcommands over the Python API (parse, call, print where the outputs went).

    culnig run                       # the whole pipeline on the embedded default (SmolLM2-135M + builtin data)
    culnig score --model M --data D --out scores.safetensors
    torchrun --nproc-per-node K $(which culnig) score --model M --data D --out scores.safetensors
    culnig merge shard0.safetensors shard1.safetensors --out scores.safetensors
    culnig identify general --neur N --ctrl C --crc R --out general.json
    culnig identify specific --neur N --ctrl C --crc R --group US --out us.json
    culnig evaluate --model M --data D --inhibit set.json --random 5 --out eval_dir
    culnig report RUN_DIR
    culnig build                     # compile the fused kernels now (else: on first use, ~1 min, once)
    culnig prompts --data D [--protocol paper] --out prompts.jsonl   # what the model sees, item by item
    culnig overlap A.json B.json [--eval SRC_A --eval SRC_B --model M] --out DIR   # shared neurons, cross-effects
    culnig run --protocol paper      # the paper's prompts, CountryRC items, dtype and random baseline
    culnig compare --max-items 200   # CULNIG's neurons beside LAPE's (activation probability)
    culnig finetune --neurons general.json --end top bottom random --budget 0.1 --task builtin:qnli --out ft_dir
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import fields
from pathlib import Path

from culnig_ext._utils.version import __version__

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


def _add_scale_args(p: argparse.ArgumentParser, *, score_only: bool = True) -> None:
    """Options of long scoring jobs (``culnig score``; ``culnig run`` forwards the ones that apply to it)."""
    p.add_argument("--checkpoint", default="auto",
                   help="snapshot file for resuming an interrupted run: a path, 'auto' (next to the output, "
                        "<out>.ckpt) or 'none' (default: auto). Re-running the same command resumes from it")
    p.add_argument("--checkpoint-every", type=int, default=20,
                   help="snapshot every N batches (and at least every 5 minutes) (default: 20)")
    p.add_argument("--device-map", default=None,
                   help="spread the model over devices: 'auto' or an accelerate map as JSON (default: none)")
    p.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"],
                   help="attention kernel; recorded in the table (default: sdpa)")
    if score_only:
        p.add_argument("--shard", default=None, metavar="K/N",
                       help="score only items K, K+N, K+2N, ... (0 <= K < N); 'culnig merge' the N outputs")
        p.add_argument("--sites", default=None,
                       help="comma-separated site names and/or kinds 'mlp', 'attn' (default: all)")
        p.add_argument("--max-items", type=int, default=None, help="score only the first N items")


def _shard(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    try:
        k, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be K/N with integers, e.g. 0/4; got {spec!r}") from None
    if not 0 <= k < n:
        raise ValueError(f"--shard {spec}: need 0 <= K < N")
    return k, n


def _device_map(spec: str | None):
    from culnig_ext.models.loading import parse_device_map

    return parse_device_map(spec)


def _add_format(p: argparse.ArgumentParser, default: str = "letter") -> None:
    p.add_argument("--format", default=default, choices=FORMATS + (("auto",) if default == "auto" else ()),
                   help="letter: the next token is the option letter (instruction-tuned models); cloze: the target "
                        "is the option's text, scored by likelihood (small models) (default: %(default)s)")


def _add_finetune_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The module study's options (``culnig finetune``; prefixed ``--finetune-`` on ``culnig run``)."""
    from culnig_ext.studies.finetune.study import StudySettings

    d = StudySettings()
    p.add_argument(f"--{prefix}end", nargs="+", default=list(d.ends), choices=["top", "bottom", "random"],
                   help="which ends to train, each from the same start (default: top bottom random)")
    p.add_argument(f"--{prefix}budget", type=float, default=d.budget,
                   help="share of the decoder layers' parameters to train (default: %(default)s, the paper's)")
    p.add_argument(f"--{prefix}by", default=d.by, choices=["count", "density"],
                   help="rank blocks by neuron count (paper) or count per neuron of the block (default: count)")
    p.add_argument(f"--{prefix}task", default="builtin:qnli",
                   help="target task: builtin:qnli, qnli, mrpc (hub), qnli:PATH, mrpc:PATH (default: %(default)s)")
    p.add_argument(f"--{prefix}task-test", default=None,
                   help="target task's test items (default: the task's test split; needed for a local file)")
    p.add_argument(f"--{prefix}lora", action="store_true", help="LoRA (r=32, alpha=64) on the picked modules")
    p.add_argument(f"--{prefix}epochs", type=int, default=d.epochs, help="epochs (default: %(default)s)")
    p.add_argument(f"--{prefix}lr", type=float, default=d.lr, help="constant AdamW lr (default: %(default)s)")
    p.add_argument(f"--{prefix}train-batch-size", type=int, default=d.batch_size,
                   help="training items per forward/backward (default: %(default)s)")
    p.add_argument(f"--{prefix}grad-accum", type=int, default=d.grad_accum,
                   help="batches per optimizer step (default: %(default)s)")
    p.add_argument(f"--{prefix}max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument(f"--{prefix}max-train-items", type=int, default=None,
                   help="seeded sample of the training items (default: all)")


def _study_settings(args, prefix: str = "", **extra):
    from culnig_ext.studies.finetune.study import StudySettings

    def get(name):
        return getattr(args, prefix + name)

    return StudySettings(ends=tuple(get("end")), budget=get("budget"), by=get("by"), lora=get("lora"),
                         epochs=get("epochs"), lr=get("lr"), batch_size=get("train_batch_size"),
                         grad_accum=get("grad_accum"), max_steps=get("max_steps"), **extra)


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
    _add_scale_args(p)
    p.add_argument("--checkpoint-activations", action="store_true",
                   help="recompute each decoder layer in the backward pass instead of keeping its activations "
                        "(long inputs: far less memory, ~1.3x the time; same scores)")

    p = sub.add_parser("merge", help="add up score tables of disjoint items (shards) into one")
    p.add_argument("tables", nargs="+", help="score tables (.safetensors) of the same model, sites, dtype, clamp")
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
    p.add_argument("--data", action="append", default=[],
                   help="item source to evaluate (repeat for several sets; or only --lm-eval)")
    p.add_argument("--lm-eval", default=None, metavar="TASKS",
                   help="comma-separated lm-evaluation-harness tasks, run on the model under every condition")
    p.add_argument("--lm-eval-include", default=None, metavar="DIR",
                   help="folder of lm-eval task YAML files (tasks on local data files)")
    p.add_argument("--lm-eval-limit", type=int, default=None, help="documents per lm-eval task (default: all)")
    p.add_argument("--split", default="all", choices=["neur", "test", "all"], help="BLEnD topic split")
    p.add_argument("--inhibit", help="NeuronSet JSON to inhibit (without it: plain evaluation)")
    p.add_argument("--random", type=int, default=0, help="number of random sets (same count per site)")
    p.add_argument("--paper-random", type=int, default=0,
                   help="number of random sets drawn the paper's way (uniform over all neurons pooled)")
    p.add_argument("--protocol", default="ours", choices=["ours", "paper"],
                   help="which protocol the items follow (stated in the report); paper: use paper:SOURCE data")
    p.add_argument("--restrict-to-choices", action="store_true",
                   help="letter format: argmax over the option letters instead of the full vocabulary")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sets and option draws")
    p.add_argument("--out", required=True, help="output folder: per-condition records, results.json, report.md")

    p = sub.add_parser("prompts", help="write each item's exact model input (after the chat template) and target")
    p.add_argument("--data", required=True, help="item source (any: builtin:cultural, builtin:countryrc, a BLEnD "
                                                  "folder, normad:PATH, paper:countryrc, ...)")
    p.add_argument("--split", default="all", choices=["neur", "test", "all"],
                   help="BLEnD topics, or the paper's neuron/held-out halves under --protocol paper")
    p.add_argument("--protocol", default="ours", choices=["ours", "paper"],
                   help="paper: the paper's own prompts for CountryRC, NormAd, CulturalBench, WVB, QNLI, MRPC, CSQA")
    _add_format(p)
    p.add_argument("--model", default="smollm2", help="the model whose tokenizer and chat template to use")
    p.add_argument("--seed", type=int, default=0, help="seed of option draws in generated items")
    p.add_argument("--out", required=True, help="output .jsonl (written atomically)")

    p = sub.add_parser("overlap", help="overlap of neuron sets (counts, Jaccard, per layer) and the cross-effects "
                                       "of inhibiting each on the others' evaluation sets")
    _add_model_args(p)
    p.add_argument("sets", nargs="+", help="neuron-set JSON files (culnig identify), at least 2")
    p.add_argument("--eval", action="append", default=[],
                   help="evaluation source of each set, in the same order (repeat; omit for overlap counts only)")
    p.add_argument("--split", default="test", choices=["neur", "test", "all"],
                   help="split of the evaluation sources (default: test, the held-out halves)")
    p.add_argument("--protocol", default="ours", choices=["ours", "paper"],
                   help="paper: the evaluation sources are read with the paper's prompts (paper:NAME:PATH)")
    p.add_argument("--format", default="letter", choices=list(FORMATS), help="answer format (default: letter)")
    p.add_argument("--seed", type=int, default=0, help="seed of option draws in generated items")
    p.add_argument("--out", required=True, help="output folder: overlap.json, overlap.md, overlap.png")

    p = sub.add_parser("report", help="(re)write report.md and plots from a run folder's results.json")
    p.add_argument("run_dir", help="a folder written by 'culnig run' or 'culnig evaluate'")

    p = sub.add_parser("build", help="compile the fused C++/CUDA kernels now (else on first use), check, cache")
    from culnig_ext.kernels.build import add_arguments as add_build_arguments

    add_build_arguments(p)

    p = sub.add_parser("finetune", help="module study: fine-tune the blocks with the most / fewest culture "
                                        "neurons (or random ones) and measure target gain and cultural loss")
    _add_model_args(p)
    _add_format(p, default="auto")
    p.add_argument("--neurons", required=True, help="NeuronSet JSON ranking the blocks (e.g. general.json)")
    _add_finetune_args(p)
    p.add_argument("--data", default="builtin:cultural", help="cultural set; its test split is evaluated")
    p.add_argument("--crc-test", default="builtin:countryrc-test", help="CountryRC evaluation set")
    p.add_argument("--general", default="builtin:general", help="non-cultural set ('' to skip)")
    p.add_argument("--max-test-items", type=int, default=120, help="cap per evaluation set (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of picks' ties, data order, LoRA init, samples")
    p.add_argument("--out", required=True, help="output folder: ranking, per-item records, finetune.md")

    p = sub.add_parser("run", help="the whole pipeline: score, identify, inhibit/evaluate, report")
    from culnig_ext.studies.options import add_arguments
    from culnig_ext.studies.pipeline import RunConfig

    p.add_argument("--config", metavar="FILE",
                   help="options from a YAML or JSON file (keys: the option names with underscores, e.g. the "
                        "config.json a run writes); flags given here override it")
    add_arguments(p, RunConfig)

    p = sub.add_parser("sweep", help="choose identification settings on a validation split, report on the test split")
    from culnig_ext.studies.sweep import SweepConfig

    sd = SweepConfig()
    p.add_argument("--out", default=sd.out, help="output folder (default: %(default)s)")
    p.add_argument("--model", default=sd.model, help="model (default: the embedded smollm2)")
    p.add_argument("--data", default=sd.data, help="cultural item source (default: auto, as for 'culnig run')")
    p.add_argument("--crc", default=sd.crc, help="CountryRC scoring templates (default: auto)")
    p.add_argument("--crc-test", default=sd.crc_test, help="CountryRC evaluation templates (default: auto)")
    p.add_argument("--general", default=sd.general, help="non-cultural set: contrast/validation/test thirds")
    p.add_argument("--format", default=sd.format, choices=FORMATS, help="answer format (default: %(default)s)")
    p.add_argument("--normalize", default=",".join(sd.normalize), help="grid: normalisations (default: %(default)s)")
    p.add_argument("--control", default=",".join(sd.control), help="grid: control prompts (default: %(default)s)")
    p.add_argument("--contrast-general", default=",".join("on" if x else "off" for x in sd.contrast_general),
                   help="grid: general-ability contrast off/on (default: %(default)s)")
    p.add_argument("--scale", default=",".join(f"{x:g}" for x in sd.scale),
                   help="grid: factors on the paper's top fractions t_mlp/t_attn (default: %(default)s)")
    p.add_argument("--random", type=int, default=sd.n_random, help="random sets on the test split (default: %(default)s)")
    p.add_argument("--max-scoring-items", type=int, default=sd.max_scoring_items, help="default: %(default)s")
    p.add_argument("--max-val-items", type=int, default=sd.max_val_items, help="default: %(default)s")
    p.add_argument("--max-test-items", type=int, default=sd.max_test_items, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=sd.batch_size)
    p.add_argument("--dtype", default=sd.dtype, choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=sd.seed)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_compare(sub)
    for command in sub.choices.values():  # on every subcommand, after its name: culnig run --json ...
        _add_output_args(command)
    return parser


def _add_output_args(p: argparse.ArgumentParser) -> None:
    from culnig_ext._utils.logs import LEVELS

    p.add_argument("--log-level", default="info", choices=LEVELS,
                   help="messages on stderr from this level up (default: info)")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable JSON summary on stdout instead of the text summary")


def _add_compare(sub) -> None:
    from culnig_ext.studies.compare import CompareConfig
    from culnig_ext.studies.options import add_arguments

    p = sub.add_parser("compare", help="CULNIG's neurons beside LAPE's (activation probability): overlap, layers, "
                                       "inhibition effect against random sets")
    add_arguments(p, CompareConfig)


def _cmd_compare(args) -> dict:
    from culnig_ext.studies.compare import CompareConfig, compare_markdown, run_compare
    from culnig_ext.studies.options import build

    cfg = build(CompareConfig, args)
    with _hf_bars(cfg.progress):
        result = run_compare(cfg)
    return {"message": compare_markdown(result) + f"\nwrote {Path(cfg.out) / 'compare.md'}", "compare": result}


def _cmd_score(args) -> str:
    from culnig_ext.scoring import distributed
    from culnig_ext.scoring.resume import resolve_checkpoint
    from culnig_ext.models.loading import load_model
    from culnig_ext.studies.preflight import check_score
    from culnig_ext.scoring.scorer import remove_checkpoint, score
    from culnig_ext.models.sites import site_names
    from culnig_ext.data.streaming import encoded

    shard, device_map = _shard(args.shard), _device_map(args.device_map)
    items = check_score(args)  # a .jsonl item file streams (validated in one pass now, read lazily when scoring)
    job = distributed.discover()  # under torchrun: this rank's process group (gloo on CPU, nccl on CUDA)
    try:
        device = args.device or (str(job.device) if job is not None and job.device.type == "cuda" else None)
        model, tokenizer = load_model(args.model, dtype=args.dtype, device=device, device_map=device_map,
                                      attn_implementation=args.attn_implementation)
        clamp = args.clamp_min if args.clamp_min is not None else (0.0 if args.control else None)
        checkpoint = resolve_checkpoint(args.checkpoint, args.out)
        table = score(model, encoded(items, tokenizer, format=args.format, control=args.control),
                      batch_size=args.batch_size, clamp_min=clamp, progress=not args.no_progress,
                      sites=site_names(model, args.sites), shard=shard, max_items=args.max_items,
                      checkpoint=checkpoint, checkpoint_every=args.checkpoint_every, keep_checkpoint=True,
                      provenance={"prompt_format": args.format, "control": args.control or ""},
                      checkpoint_activations=args.checkpoint_activations)
        try:
            if job is None or job.is_main:
                table.save(args.out)
        except Exception:
            if job is not None:
                distributed.check(job, False)  # the others keep their checkpoints and stop too
            raise
        if job is not None:
            distributed.check(job, True)  # the output is written: every rank may drop its checkpoint
        if checkpoint is not None:
            remove_checkpoint(checkpoint)
    finally:
        distributed.close(job)
    if job is not None and not job.is_main:
        return f"rank {job.rank} of {job.world}: done (rank 0 wrote {args.out})"
    ranks = f" ({job.world} ranks)" if job is not None else ""
    return f"wrote {args.out}{ranks}: {table}"


def _cmd_merge(args) -> str:
    from culnig_ext.studies.preflight import check_merge
    from culnig_ext.scoring.table import ScoreTable

    tables = check_merge(args)
    merged = ScoreTable.merge(tables, names=args.tables)
    merged.save(args.out)
    return f"wrote {args.out}: {merged} from {len(tables)} tables"


def _cmd_identify(args) -> str:
    from culnig_ext.selection import culnig as select
    from culnig_ext._utils.names import slug
    from culnig_ext.studies.preflight import check_identify

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
    from culnig_ext.selection import culnig as select
    from culnig_ext.models.loading import load_model
    from culnig_ext.studies.conditions import Condition, accuracy_rows, evaluate_conditions
    from culnig_ext.data.defaults import is_non_cultural
    from culnig_ext.studies.preflight import check_evaluate
    from culnig_ext.reporting.report import ReportResults, write_report
    from culnig_ext.stats.verdict import from_results as verdict_from_results

    inputs = check_evaluate(args)
    sets, neurons = inputs.sets, inputs.neurons
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    conditions = [Condition("original", None)]
    if neurons is not None:
        neurons.validate(model)  # again: a GGUF of fused projections shows its layout only once loaded
        conditions.append(Condition("inhibited", neurons))
        conditions += [Condition(f"random{i}", select.random_like(neurons, model, seed=args.seed + i))
                       for i in range(args.random)]
        conditions += [Condition(f"paper_random{i}", select.random_like(neurons, model, seed=args.seed + i,
                                                                         match="none"))
                       for i in range(args.paper_random)]
    out = Path(args.out)
    results = (evaluate_conditions(model, tokenizer, sets, conditions, fmt=args.format, batch_size=args.batch_size,
                                   progress=not args.no_progress, save_dir=out / "eval") if sets else {})
    cultural = {name: not is_non_cultural(name) for name in results}
    rows = [row for name, by_cond in results.items()
            for row in accuracy_rows(name, by_cond, "inhibited", cultural=cultural[name], seed=args.seed)]
    verdict = verdict_from_results(results, cultural, inhibited="inhibited", seed=args.seed) if results else None
    if inputs.lm_eval_tasks:
        from culnig_ext.intervention.lmeval import run_lm_eval

        lm = run_lm_eval(model, tokenizer, inputs.lm_eval_tasks, conditions, include_path=args.lm_eval_include,
                         limit=args.lm_eval_limit, batch_size=args.batch_size, seed=args.seed)
        rows += [row for task, by_cond in lm.items()
                 for row in accuracy_rows(f"lm-eval: {task} ({next(iter(by_cond.values())).metric})", by_cond,
                                          "inhibited", cultural=False, seed=args.seed)]
    res = ReportResults(title=f"Evaluation: {args.model}", model=args.model,
                        neuron_set=args.inhibit or "(none)", n_neurons=len(neurons) if neurons else None,
                        rows=rows, metadata={"protocol": args.protocol, "format": args.format},
                        verdict=verdict.to_dict() if verdict is not None else None)
    report = write_report(out, res)
    lines = [f"{r.eval_set}: original {r.original:.3f}, inhibited {r.inhibited:.3f}"
             + (f", random {r.random_mean:.3f}, p={r.p_value:.3g}" if r.random else "") for r in rows]
    return "\n".join(lines + [f"wrote {report}"])


def _cmd_prompts(args) -> str:
    from culnig_ext.data.model_inputs import write_prompts
    from culnig_ext.models.loading import load_tokenizer
    from culnig_ext.studies.preflight import check_prompts

    items = check_prompts(args)
    n = write_prompts(items, load_tokenizer(args.model), args.out, format=args.format)
    return f"wrote {args.out}: {n} prompts ({args.format} format, protocol {args.protocol})"


def _cmd_overlap(args) -> str:
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


def _cmd_report(args) -> str:
    from culnig_ext.studies.preflight import check_report
    from culnig_ext.reporting.report import write_report

    return f"wrote {write_report(args.run_dir, check_report(args))}"


def _cmd_finetune(args) -> str:
    from culnig_ext.studies.finetune.report import REPORT_FILE
    from culnig_ext.studies.finetune.study import FinetuneConfig, run_finetune

    settings = _study_settings(args, seed=args.seed, eval_batch_size=args.batch_size, progress=not args.no_progress)
    cfg = FinetuneConfig(
        neurons=args.neurons, out=args.out, model=args.model, task=args.task, task_test=args.task_test,
        max_train_items=args.max_train_items, max_test_items=args.max_test_items, data=args.data,
        crc_test=args.crc_test, general=args.general or None, format=args.format, dtype=args.dtype,
        device=args.device, settings=settings)
    results = run_finetune(cfg)
    lines = [f"{e['end']}: target gain {100 * e['target_gain']['diff']:+.2f} pp; drops "
             + ", ".join(f"{n} {100 * d['diff']:+.2f} pp" for n, d in e["drops"].items()) for e in results["ends"]]
    return "\n".join(lines + [f"wrote {Path(args.out) / REPORT_FILE}"])


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
    from culnig_ext.studies.options import build, to_dict
    from culnig_ext.studies.pipeline import RunConfig, run_pipeline, run_preset

    cfg = build(RunConfig, args, args.config, preset=run_preset)
    with _hf_bars(cfg.progress):  # progress may come from the config file
        out = run_pipeline(cfg)
    message = "\n".join([
        f"done in {out.timings['total']:.0f} s ({out.format} format, protocol {cfg.protocol}). "
        f"Outputs in {out.run_dir}/:",
        f"  report     {out.report}",
        f"  summary    {out.run_dir / 'summary.md'}",
        f"  neurons    {out.run_dir / 'neurons'}/general.json, specific/<group>.json",
        f"  scores     {out.run_dir / 'scores'}/*.safetensors",
        f"  config     {out.run_dir / 'config.json'} (culnig run --config FILE repeats the run)",
    ] + ([f"  finetune   {out.run_dir / 'finetune'}/finetune.md"] if cfg.finetune else []))
    return {
        "message": message, "run_dir": str(out.run_dir), "report": str(out.report), "format": out.format,
        "general_neurons": len(out.general), "specific_neurons": {g: len(s) for g, s in out.specific.items()},
        "timings": out.timings, "config": to_dict(cfg),
    }


def _cmd_build(args: argparse.Namespace) -> str:
    from culnig_ext.kernels.build import run

    return run(args)


def _csv(text: str, option: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise ValueError(f"{option}: give at least one value")
    bad = [v for v in values if allowed is not None and v not in allowed]
    if bad:
        raise ValueError(f"{option}: {bad[0]!r} is not one of {allowed}")
    return values


def _cmd_sweep(args) -> str:
    from culnig_ext.studies.sweep import SweepConfig, run_sweep

    try:
        scale = tuple(float(x) for x in _csv(args.scale, "--scale"))
    except ValueError as exc:
        raise ValueError(f"--scale: expected numbers, got {args.scale!r} ({exc})") from None
    cfg = SweepConfig(
        out=args.out, model=args.model, data=args.data, crc=args.crc, crc_test=args.crc_test, general=args.general,
        format=args.format, normalize=_csv(args.normalize, "--normalize", ("count", "prob")),
        control=_csv(args.control, "--control", ("empty", "frame")),
        contrast_general=tuple(v == "on" for v in _csv(args.contrast_general, "--contrast-general", ("off", "on"))),
        scale=scale, n_random=args.random, max_scoring_items=args.max_scoring_items,
        max_val_items=args.max_val_items, max_test_items=args.max_test_items, batch_size=args.batch_size,
        dtype=args.dtype, device=args.device, seed=args.seed, progress=not args.no_progress,
    )
    out = run_sweep(cfg)
    return (f"[culnig] sweep done in {out.timings['total']:.0f} s; chosen on validation data: {out.chosen.name}\n"
            f"  report     {out.report}")


COMMANDS = {"score": _cmd_score, "merge": _cmd_merge, "identify": _cmd_identify, "evaluate": _cmd_evaluate,
            "report": _cmd_report, "run": _cmd_run, "sweep": _cmd_sweep, "build": _cmd_build,
            "finetune": _cmd_finetune, "compare": _cmd_compare, "prompts": _cmd_prompts, "overlap": _cmd_overlap}


def _saved_checkpoint(args) -> str | None:
    """The checkpoint an interrupted ``culnig score`` left (this rank's file), for the one-line message."""
    from culnig_ext.scoring.resume import resolve_checkpoint, this_rank_path

    if args.command != "score":
        return None
    path = resolve_checkpoint(getattr(args, "checkpoint", "none"), args.out)
    return str(this_rank_path(path)) if path is not None and this_rank_path(path).exists() else None


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
    from culnig_ext._utils.interrupt import exit_status, interrupted_message, signals_as_exceptions
    from culnig_ext.studies.preflight import error_line

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from culnig_ext._utils import logs

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
        print(interrupted_message(args.command, exc, argv, out=out, checkpoint=_saved_checkpoint(args)),
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
