"""Fused attribution op vs plain PyTorch vs the read-once ceiling, in one process on the same tensors.

    python benchmarks/bench_ops.py            # B=16, T=128, N in (6144, 15360), float32 and bfloat16
    python benchmarks/bench_ops.py --quick    # N=6144 only, fewer repetitions
    python benchmarks/bench_ops.py --device cuda --shape 16 2048 14336   # the GPU check's shape

On the CPU every kernel variant this machine runs (default / avx2 / avx512, see culnig_ext.kernels.ops.cpu_capability)
gets its own rows; --capability picks one.

Columns:
  fused      torch.ops.culnig.max_attribution_accumulate_ (the C++/CUDA op)
  plain      (act*grad).masked_fill(~mask[..., None], -inf).amax(1); acc.index_add_(0, group, w[:, None]*m)
  read-once  act.sum(); grad.sum()   -- the cost of reading both inputs once with torch's own kernels
  speed-up   plain / fused;   of ceiling   read-once / fused  (>= 1 means the fused op is as fast as
             reading the inputs once; it may exceed 1 because masked (padding) tokens are never read)
  GB/s       bytes of act and grad over the time: fused counts the counted (unmasked) tokens it reads,
             read-once all of them
The fused op gets the batch's token list (culnig_ext.kernels.ops.token_list, built once per batch as the scorer does).
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

from culnig_ext.kernels import ops  # noqa: E402  (loads / builds the extension)


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


def bench(device: torch.device, B: int, T: int, N: int, dtype: torch.dtype, reps: int) -> dict:
    """One row: medians (ms) of fused / plain / read-once on the same inputs, and the bandwidths (GB/s)."""
    act, grad, mask, weight, group, acc = make_inputs(B, T, N, dtype, device, pad_frac=0.2)
    index, count = ops.token_list(mask)

    def fused():
        torch.ops.culnig.max_attribution_accumulate_(acc, act, grad, mask, weight, group, None, index, count)

    def plain():
        m = (act * grad).masked_fill(~mask[..., None], float("-inf")).amax(1)
        acc.index_add_(0, group, (weight[:, None] * m).double())

    def read_once():
        return act.sum(), grad.sum()

    t = interleaved_median_ms({"fused": fused, "plain": plain, "read": read_once}, device, reps)
    row_bytes = 2 * N * act.element_size()
    counted = int(mask.sum())
    return {
        "dtype": str(dtype).removeprefix("torch."), "B": B, "T": T, "N": N,
        "fused_ms": t["fused"], "plain_ms": t["plain"], "read_once_ms": t["read"],
        "speedup": t["plain"] / t["fused"], "of_ceiling": t["read"] / t["fused"],
        "fused_gbs": counted * row_bytes / t["fused"] / 1e6, "read_once_gbs": B * T * row_bytes / t["read"] / 1e6,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=6144 only, 3 repetitions")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--shape", type=int, nargs=3, metavar=("B", "T", "N"), help="one shape instead of the default")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--capability", default=None, help="CPU only: one kernel variant (default: every one)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    reps = args.reps or (3 if args.quick else 9)
    if args.shape:
        shapes = [tuple(args.shape)]
    else:
        shapes = [(16, 128, n) for n in ((6144,) if args.quick else (6144, 15360))]
    if ops.backend(device) == "reference":
        raise SystemExit(f"the fused extension is not loaded for {device} ({ops.LOAD.detail}); nothing to benchmark")
    if device.type == "cpu":
        capabilities = [args.capability] if args.capability else ops.cpu_capabilities()
    else:
        capabilities = ["-"]
    print(f"backend={ops.backend(device)} ({ops.LOAD.kind}: {ops.LOAD.detail})  threads={torch.get_num_threads()}  "
          f"~20% left padding  reps={reps}  torch {torch.__version__}")
    header = (f"{'cpu kernel':<10} {'dtype':<9} {'B':>3} {'T':>5} {'N':>6} | {'fused ms':>9} {'plain ms':>9} "
              f"{'read-once ms':>12} | {'speed-up':>8} {'of ceiling':>10} | {'fused GB/s':>10} {'read GB/s':>9}")
    print(header)
    print("-" * len(header))
    rows = []
    chosen = ops.cpu_capability() if device.type == "cpu" else None
    try:
        for dtype_name in args.dtypes:
            for B, T, N in shapes:
                for capability in capabilities:
                    if device.type == "cpu":
                        ops.set_cpu_capability(capability)
                    r = bench(device, B, T, N, getattr(torch, dtype_name), reps)
                    r["capability"] = capability
                    rows.append(r)
                    print(f"{capability:<10} {r['dtype']:<9} {B:>3} {T:>5} {N:>6} | {r['fused_ms']:>9.2f} "
                          f"{r['plain_ms']:>9.2f} {r['read_once_ms']:>12.2f} | {r['speedup']:>7.1f}x "
                          f"{r['of_ceiling']:>10.2f} | {r['fused_gbs']:>10.1f} {r['read_once_gbs']:>9.1f}", flush=True)
    finally:
        if chosen is not None:
            ops.set_cpu_capability(chosen)
    return rows


if __name__ == "__main__":
    main()
