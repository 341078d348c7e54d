"""Scaling benchmark: does streaming keep memory flat, and does a 2-rank job give the 1-rank table?

    python benchmarks/bench_scale.py [--n 500] [--batch-size 16]

1. Writes N and 20xN synthetic encoded items to JSONL files and scores each, streamed (``read_score_jsonl``), in a
   fresh subprocess on a tiny random Llama: peak RSS of that process (``ru_maxrss``) and items/s over the scoring
   call (after a warm-up on 4 batches). Goals: peak-RSS ratio (20xN / N) <= 1.15, items/s within 10%.
2. Scores the N items with ``torchrun --nproc-per-node 2`` (gloo on CPU) and in one process, and prints the 2-rank
   table's max relative difference from the 1-rank table (max |a - b| / max |b| over all sites, and the worst
   element-wise |a - b| / |b| among elements with |b| > 1e-3 max |b|).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 512


def tiny_model(seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.1)
    return model.eval()


def write_items(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            length = rng.randint(8, 48)
            f.write(json.dumps({"id": f"s{i}", "group": f"g{i % 8}", "input_ids": [rng.randrange(3, VOCAB)
                                                                                   for _ in range(length)],
                                "answer_id": rng.randrange(3, VOCAB)}) + "\n")


def child(path: str, batch_size: int, out: str | None) -> None:
    """Score one JSONL file in this process; print items/s and peak RSS as JSON."""
    import torch

    import culnig_ext
    from culnig_ext.data.streaming import read_score_jsonl

    torch.set_num_threads(1)
    model = tiny_model()
    # warm-up on a few items (allocator, kernels, thread start), the same for every size
    culnig_ext.score(model, read_score_jsonl(path), batch_size=batch_size, max_items=4 * batch_size, progress=False,
                     distributed=False)
    started = time.perf_counter()
    table = culnig_ext.score(model, read_score_jsonl(path), batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - started
    if out and int(os.environ.get("RANK", "0")) == 0:
        table.save(out)
    print(json.dumps({"items": table.num_items, "seconds": seconds,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(path: Path, batch_size: int, out: Path | None = None, ranks: int = 1) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    args = [__file__, "--child", str(path), "--batch-size", str(batch_size)] + (["--out", str(out)] if out else [])
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), *args]
    else:
        cmd = [sys.executable, *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"child failed: {' '.join(cmd)}\n{res.stderr[-3000:]}")
    return json.loads([line for line in res.stdout.splitlines() if line.startswith("{")][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batch_size, args.out)
        return

    import torch

    from culnig_ext.scoring.table import ScoreTable

    print(f"bench_scale: tiny Llama (2 layers, hidden 64, 8 groups), batch {args.batch_size}, one thread per "
          f"process, items streamed from JSONL")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = {}
        for n in (args.n, 20 * args.n):
            path = tmp / f"items{n}.jsonl"
            write_items(path, n)
            r = run_child(path, args.batch_size)
            rows[n] = r
            print(f"  {n:>7} items: peak RSS {r['peak_rss_mib']:8.1f} MiB, {r['items'] / r['seconds']:8.1f} items/s "
                  f"({r['seconds']:.1f} s)")
        small, large = rows[args.n], rows[20 * args.n]
        mem_ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
        speed_ratio = (large["items"] / large["seconds"]) / (small["items"] / small["seconds"])
        print(f"  peak RSS ratio 20xN / N: {mem_ratio:.3f} (goal <= 1.15: {'met' if mem_ratio <= 1.15 else 'NOT met'})")
        print(f"  items/s ratio 20xN / N:  {speed_ratio:.3f} (goal within 10%: "
              f"{'met' if abs(speed_ratio - 1) <= 0.10 else 'NOT met'})")

        path = tmp / f"items{args.n}.jsonl"
        one, two = tmp / "one.safetensors", tmp / "two.safetensors"
        run_child(path, args.batch_size, one, ranks=1)
        run_child(path, args.batch_size, two, ranks=2)
        a, b = ScoreTable.load(two), ScoreTable.load(one)
        assert a.groups == b.groups and a.counts.tolist() == b.counts.tolist()
        top = max(b[s].abs().max().item() for s in b.sites)
        norm = max((a[s] - b[s]).abs().max().item() for s in b.sites) / top
        elementwise = 0.0
        for s in b.sites:
            mask = b[s].abs() > 1e-3 * top
            elementwise = max(elementwise, ((a[s] - b[s]).abs()[mask] / b[s].abs()[mask]).max().item())
        print(f"  2-rank vs 1-rank table ({args.n} items, gloo): max |a-b| / max |b| = {norm:.3e}; "
              f"max element-wise relative difference = {elementwise:.3e}")
        print(f"  torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
