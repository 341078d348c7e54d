"""``culnig score``: every neuron's attribution over a data set into a safetensors table (sharded with ``--shard`` or
torchrun, resumable from a checkpoint)."""
from __future__ import annotations

import argparse

from culnig_ext.cli.common import SPLITS, add_format, add_model_args, add_scale_args, parse_device_map, parse_shard

NAME = "score"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="score every neuron over a data set into a safetensors table")
    add_model_args(p)
    add_format(p)
    p.add_argument("--data", required=True, help="item source: builtin:cultural, a .jsonl, a BLEnD folder, ...")
    p.add_argument("--split", default="all", choices=list(SPLITS),
                   help="BLEnD topic split: neur (Food, Work life, Sport), test (the other three), all")
    p.add_argument("--control", nargs="?", const="empty", default=None, choices=["empty", "frame"],
                   help="score the control variant of the items: 'empty' removes the question (the paper's "
                        "BLEnD_ctrl), 'frame' keeps a content-free question; clamps item scores at 0")
    p.add_argument("--clamp-min", type=float, default=None, help="clamp each item's max at this value")
    p.add_argument("--seed", type=int, default=0, help="seed of option draws in generated items")
    p.add_argument("--out", required=True, help="output .safetensors file (written atomically)")
    add_scale_args(p)
    p.add_argument("--checkpoint-activations", action="store_true",
                   help="recompute each decoder layer in the backward pass instead of keeping its activations "
                        "(long inputs: far less memory, ~1.3x the time; same scores)")
    p.add_argument("--deterministic", action="store_true",
                   help="torch's deterministic algorithms (bit-identical GPU runs and resumes, at some cost in "
                        "speed; the CPU is deterministic already); recorded in the table")
    return p


def run(args) -> str:
    from culnig_ext.studies.option_checks import score_options

    score_options(args)  # numbers and the output file, before torch is imported
    shard = parse_shard(args.shard)
    from culnig_ext.scoring import distributed
    from culnig_ext.scoring.scorer import remove_checkpoint
    from culnig_ext.studies.preflight import check_score

    device_map = parse_device_map(args.device_map)
    items = check_score(args)  # a .jsonl item file streams (validated in one pass now, read lazily when scoring)
    job = distributed.discover()  # under torchrun: this rank's process group (gloo on CPU, nccl on CUDA)
    try:
        table, checkpoint = _score(args, items, job, shard, device_map)
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


def _score(args, items, job, shard, device_map):
    """This rank's table (not saved yet) and its checkpoint path (None without one)."""
    from culnig_ext.data.streaming import encoded
    from culnig_ext.models.loading import load_model
    from culnig_ext.models.sites import site_names
    from culnig_ext.scoring.determinism import deterministic
    from culnig_ext.scoring.resume import resolve_checkpoint
    from culnig_ext.scoring.scorer import score

    device = args.device or (str(job.device) if job is not None and job.device.type == "cuda" else None)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=device, device_map=device_map,
                                  attn_implementation=args.attn_implementation)
    clamp = args.clamp_min if args.clamp_min is not None else (0.0 if args.control else None)
    checkpoint = resolve_checkpoint(args.checkpoint, args.out)
    provenance = {"prompt_format": args.format, "control": args.control or ""}
    if args.deterministic:
        provenance["deterministic"] = "true"  # a resume of the other mode is refused (the provenance differs)
    with deterministic(args.deterministic):
        table = score(model, encoded(items, tokenizer, format=args.format, control=args.control),
                      batch_size=args.batch_size, clamp_min=clamp, progress=not args.no_progress,
                      sites=site_names(model, args.sites), shard=shard, max_items=args.max_items,
                      checkpoint=checkpoint, checkpoint_every=args.checkpoint_every, keep_checkpoint=True,
                      provenance=provenance, checkpoint_activations=args.checkpoint_activations)
    return table, checkpoint


def saved_checkpoint(args) -> str | None:
    """The checkpoint an interrupted ``culnig score`` left (this rank's file), for the one-line message."""
    from culnig_ext.scoring.resume import resolve_checkpoint, this_rank_path

    path = resolve_checkpoint(getattr(args, "checkpoint", "none"), args.out)
    return str(this_rank_path(path)) if path is not None and this_rank_path(path).exists() else None
