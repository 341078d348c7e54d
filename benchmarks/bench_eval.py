"""Cloze evaluation: one forward per option (evaluate.evaluate_encoded) vs the prompt computed once per item
(cloze_cache.evaluate_cloze_cached), on the embedded SmolLM2 and BLEnD items rebuilt from ../shared/data/blend.

    python benchmarks/bench_eval.py [--items 48] [--reps 3] [--threads 1]

Prints the median seconds per variant (interleaved repetitions, one process), their ratio, and the largest
difference between the two variants' option log-likelihoods.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default="../shared/data/blend")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    from culnig_ext.intervention.cloze_cache import evaluate_cloze_cached
    from culnig_ext.data import encode_choices, load_items
    from culnig_ext.intervention.evaluate import evaluate_encoded
    from culnig_ext.models.loading import load_model

    items = load_items(args.data, split="test")[: args.items]
    model, tok = load_model("smollm2")
    encs = [encode_choices(it, tok, format="cloze") for it in items]
    times = {"per-option": [], "cached-prompt": []}
    results = {}
    for _ in range(args.reps):
        for name in times:
            t = time.perf_counter()
            if name == "per-option":
                results[name] = evaluate_encoded(model, items, encs, format="cloze", batch_size=16, progress=False)
            else:
                results[name] = evaluate_cloze_cached(model, items, encs, batch_size=16, progress=False)
            times[name].append(time.perf_counter() - t)
    diff = max(abs(a - b) for ra, rb in zip(results["per-option"].records, results["cached-prompt"].records)
               for a, b in zip(ra.option_scores, rb.option_scores))
    prompt = statistics.mean(len(e.prompt_ids) for e in encs)
    option = statistics.mean(len(c) for e in encs for c in e.choice_ids)
    print(f"{len(items)} BLEnD test items, 4 options, mean prompt {prompt:.1f} tokens, mean option {option:.2f} "
          f"tokens, {args.threads} thread(s), {args.reps} interleaved reps")
    for name, ts in times.items():
        print(f"{name:<14} {statistics.median(ts):8.2f} s")
    ratio = statistics.median(times["per-option"]) / statistics.median(times["cached-prompt"])
    print(f"per-option / cached-prompt = {ratio:.2f}x   max |log-likelihood difference| = {diff:.2e}")


if __name__ == "__main__":
    main()
