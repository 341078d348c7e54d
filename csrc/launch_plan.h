// The grid of step 1 of the CUDA kernel (csrc/cuda/attribution_cuda.cu): a pure host-side function of the
// op's shape, the vector width and the device's SM count. It knows nothing of models; culnig.cpp exposes it as
// torch.ops.culnig.launch_plan so that a CPU-only test (tests/kernels/test_launch_plan.py) checks it against
// a hand-computed table, and the CUDA backend calls the same code.
//
// The plan: `threads` threads per block, each owning `vec` consecutive neurons (blocks_x = ceil(N / (threads *
// vec)) blocks along the neurons), blocks_y = min(B, 65535) along the samples (a grid-stride loop covers the
// rest) and `splits` contiguous ranges of each sample's tokens (grid.z), one partial max each.
//
//   1. As before: 128 threads; splits = enough blocks for kWantWaves x the 16 resident 128-thread blocks of
//      an SM, but >= kMinTokensPerSplit tokens per split and <= kMaxSplits. The gate sites (N = 14336) and any
//      grid that already has >= 2 blocks per SM keep exactly this plan.
//   2. Only if that grid has fewer than kFillWaves x SMs blocks (k/v sites, N = 1024, get 64 blocks on 132
//      SMs: half a wave): narrower blocks (64, then 32 threads; more blocks along N for the same threads),
//      then, if still short, more splits down to kMinTokensPerFill tokens per split (<= kMaxSplits).
//
// Why no plan can change a bit of the results: every thread computes its neurons' products and running max
// in token order whatever its block shape, so `threads` only moves work between blocks. A split is a
// contiguous token range, and step 2 combines the partials in split order (= token order) with the same
// running_max: a max is exact (no rounding), ties keep the earlier (first) token's value, -0.0/+0.0 and NaN
// resolve as in one pass (NaN is sticky and the last NaN read wins in both), and an empty split contributes the
// identity -inf. The only sum, acc[group[b], n] += weight[b] * max(clamp, m[b, n]), is formed after the max
// is complete, in sample order b = 0, 1, ... (combine_accumulate_kernel), which no plan value enters.
#pragma once

#include <algorithm>
#include <cstdint>

namespace culnig {

constexpr int64_t kPlanThreads = 128;         // threads per block of step 1 (the most; __launch_bounds__)
constexpr int64_t kPlanMinThreads = 32;       // narrowest block (one warp)
constexpr int64_t kResidentThreadsPerSm = 2048;
constexpr int64_t kWantWaves = 2;             // tier 1 aims at 2 x 16 resident blocks per SM
constexpr int64_t kFillWaves = 2;             // tier 2 runs below 2 blocks per SM
constexpr int64_t kMinTokensPerSplit = 64;    // tier 1 (partials stay < ~3% of the bytes read)
constexpr int64_t kMinTokensPerFill = 16;     // tier 2: 4 groups of the kernel's 4 rows in flight per split
constexpr int64_t kMaxSplits = 64;
constexpr int64_t kMaxGridY = 65535;

struct LaunchPlan {
  int64_t threads;   // threads per block (blockDim.x)
  int64_t blocks_x;  // blocks along the neurons
  int64_t blocks_y;  // blocks along the samples
  int64_t splits;    // token ranges per sample (grid.z)
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Tier-1 splits for a grid of `columns` = blocks_x * blocks_y blocks.
inline int64_t plan_splits(int64_t columns, int64_t T, int64_t sms) {
  const int64_t want = kWantWaves * sms * (kResidentThreadsPerSm / kPlanThreads);
  const int64_t splits = std::min({ceil_div(want, columns), T / kMinTokensPerSplit, kMaxSplits});
  return std::max<int64_t>(1, splits);
}

// B samples, T token positions, N neurons, vec neurons per thread (16 bytes / element size, or 1 for the scalar
// kernel), sms streaming multiprocessors; all >= 1 (the caller returns early for B == 0 or N == 0).
inline LaunchPlan plan_launch(int64_t B, int64_t T, int64_t N, int64_t vec, int64_t sms) {
  const int64_t fill = kFillWaves * sms;
  LaunchPlan p{kPlanThreads, ceil_div(N, kPlanThreads * vec), std::min(B, kMaxGridY), 1};
  p.splits = plan_splits(p.blocks_x * p.blocks_y, T, sms);
  while (p.blocks_x * p.blocks_y * p.splits < fill && p.threads > kPlanMinThreads &&
         ceil_div(N, (p.threads / 2) * vec) > p.blocks_x) {  // narrower blocks only if they add blocks
    p.threads /= 2;
    p.blocks_x = ceil_div(N, p.threads * vec);
    p.splits = plan_splits(p.blocks_x * p.blocks_y, T, sms);
  }
  const int64_t columns = p.blocks_x * p.blocks_y;
  if (columns * p.splits < fill) {
    const int64_t more = std::min({ceil_div(fill, columns), T / kMinTokensPerFill, kMaxSplits});
    p.splits = std::max(p.splits, more);
  }
  return p;
}

}  // namespace culnig
