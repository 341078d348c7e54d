"""Fused attribution op vs plain PyTorch vs the read-once ceiling, in one process on the same tensors.

    python benchmarks/bench_ops.py            # B=16, T=128, N in (6144, 15360), float32 and bfloat16
    python benchmarks/bench_ops.py --quick    # N=6144 only, fewer repetitions
    python benchmarks/bench_ops.py --device cuda

Columns:
  fused      torch.ops.culnig.max_attribution_accumulate_ (the C++/CUDA op)
  plain      (act*grad).masked_fill(~mask[..., None], -inf).amax(1); acc.index_add_(0, group, w[:, None]*m)
  read-once  act.sum(); grad.sum()   -- the cost of reading both inputs once with torch's own kernels
  speed-up   plain / fused;   of ceiling   read-once / fused  (>= 1 means the fused op is as fast as
             reading the inputs once; it may exceed 1 because masked (padding) tokens are never read)
Times are medians over the repetitions, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from culnig_ext import ops  # noqa: E402  (loads / builds the extension)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_median_ms(fns: dict, device: torch.device, reps: int, warmup: int = 2) -> dict[str, float]:
    """Median wall time (ms) of each fn. The candidates run round-robin, one call each per repetition, so
    load from other processes on a shared machine hits them alike and the ratios stay meaningful."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(warmup + reps):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if rep >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def make_inputs(B: int, T: int, N: int, dtype: torch.dtype, device: torch.device, pad_frac: float, seed: int = 0):
    """act, grad [B, T, N] dtype; mask [B, T] bool with left padding (mean pad_frac of the tokens masked);
    weight [B] float32; group [B] int64 over 4 groups; acc [4, N] float64."""
    gen = torch.Generator().manual_seed(seed)
    act = torch.randn(B, T, N, generator=gen).to(dtype=dtype, device=device)
    grad = torch.randn(B, T, N, generator=gen).to(dtype=dtype, device=device)
    pads = torch.randint(0, int(2 * pad_frac * T) + 1, (B,), generator=gen).clamp(max=T - 1)
    mask = torch.arange(T)[None, :] >= pads[:, None]
    weight = torch.rand(B, generator=gen).to(device)
    group = torch.randint(0, 4, (B,), generator=gen).to(device)
    acc = torch.zeros(4, N, dtype=torch.float64, device=device)
    return act, grad, mask.to(device), weight, group, acc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=6144 only, 3 repetitions")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    reps = args.reps or (3 if args.quick else 9)
    B, T = 16, 128
    Ns = (6144,) if args.quick else (6144, 15360)
    if ops.backend(device) == "reference":
        raise SystemExit(f"the fused extension is not loaded for {device} ({ops.LOAD.detail}); nothing to benchmark")
    print(f"backend={ops.backend(device)} ({ops.LOAD.kind}: {ops.LOAD.detail})  threads={torch.get_num_threads()}  "
          f"B={B} T={T}  ~20% left padding  reps={reps}  torch {torch.__version__}")
    header = f"{'dtype':<9} {'N':>6} | {'fused ms':>9} {'plain ms':>9} {'read-once ms':>12} | {'speed-up':>8} {'of ceiling':>10}"
    print(header)
    print("-" * len(header))
    for dtype in (torch.float32, torch.bfloat16):
        for N in Ns:
            act, grad, mask, weight, group, acc = make_inputs(B, T, N, dtype, device, pad_frac=0.2)

            def fused():
                torch.ops.culnig.max_attribution_accumulate_(acc, act, grad, mask, weight, group, None)

            def plain():
                m = (act * grad).masked_fill(~mask[..., None], float("-inf")).amax(1)
                acc.index_add_(0, group, (weight[:, None] * m).double())

            def read_once():
                return act.sum(), grad.sum()

            t = interleaved_median_ms({"fused": fused, "plain": plain, "read": read_once}, device, reps)
            fused_ms, plain_ms, ceiling = t["fused"], t["plain"], t["read"]
            name = str(dtype).removeprefix("torch.")
            print(f"{name:<9} {N:>6} | {fused_ms:>9.2f} {plain_ms:>9.2f} {ceiling:>12.2f} | "
                  f"{plain_ms / fused_ms:>7.1f}x {ceiling / fused_ms:>10.2f}")
            del act, grad


if __name__ == "__main__":
    main()
