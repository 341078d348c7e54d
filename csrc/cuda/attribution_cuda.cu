// CUDA backend of the culnig ops: reads act and grad once at memory bandwidth, never syncs with the host.
//
// Step 1, max_kernel: per (sample b, token split s, run of neurons) the running max of act * grad over the
// sample's counted tokens. The tokens come from the batch's compact token list (index [B, T] int32, count
// [B] int32; built once per batch on the host, or here from the mask for the old call signature), so no
// load depends on a mask bit and padding is never read. Each thread owns kVec consecutive neurons
// (16 bytes: 8 bf16/fp16, 4 fp32, 2 fp64) and loads them with one 16-byte vector load per row, kTokens
// rows of act and of grad at a time (all issued before any is used: several tokens in flight per thread);
// a warp reads 512 contiguous bytes of a row. The vector kernel is used when both tensors' base pointers
// and row/sample strides are 16-byte aligned; otherwise (odd column offsets of a fused q/k/v slice) the same
// kernel runs with kVec = 1 (scalar loads). The grid comes from plan_launch (csrc/launch_plan.h, a pure
// host function, checked on the CPU by tests/kernels/test_launch_plan.py): when B x (N / neurons per block)
// blocks would not fill the GPU, the tokens of each sample are split into S contiguous ranges (grid.z), one
// partial max each, and below 2 blocks per SM (k/v sites, N = 1024) the blocks are narrowed to 64 or 32
// threads and the tokens split further (down to 16 per split). That header says why no plan changes a bit.
//
// Step 2 combines the S partials in split order (s = 0, 1, ...), which is token order, with the same
// running_max, so the result does not depend on S: every backend gives the same bits (ties keep the
// earliest token, NaN propagates). For max_attribution_accumulate_ step 2 is one kernel in which a block
// owns whole columns: all its threads combine the partials of 32 samples at a time, then, per column, one
// thread per distinct group of those samples adds weight[b] * max(clamp, m) into acc[group[b], n] for its
// samples b in order, in a register (one read and one write of acc per group and 32 samples, where warp 0
// used to read-modify-write acc once per sample, serially). Every acc element still sees its terms in sample
// order b = 0..B-1 with the same expression, so the float64 sums are the same bits as before, deterministic
// and in the CPU backend's order. Fixed order, no atomics. Step 2 reads S*B*N*4 bytes against step 1's
// B*T*N*2*sizeof(scalar): in bf16 at most 1/64 of it in the tier-1 plans (S <= T/64), 1/16 in the fill tier.
//
// Host side: no call reads device data when the token list is given; ranges (count in [1, T], positions
// in [0, T), group in [0, G)) are checked by device-side asserts (a position once per block, see token_at). All launches go to the current stream,
// temporaries come from the caching allocator: one batch's calls can be captured in a CUDA graph.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
// c10/cuda headers only (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE headers that a
// minimal CUDA toolkit lacks).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>

#include "../attribution.h"
#include "../launch_plan.h"

namespace culnig {
namespace {

constexpr int kThreads = static_cast<int>(kPlanThreads);  // most threads per block of step 1 (4 warps)
constexpr int kTokens = 4;           // token rows loaded per thread before any is used
constexpr int kColumns = 32;         // step 2: columns per block (one warp wide) ...
constexpr int kRows = 8;             // ... warps per block ...
constexpr int kChunk = 32;           // ... and samples combined at once (kChunk / kRows per warp)

// kVec scalars in one 16-byte load (kVec = 1: a plain scalar load).
template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t v[kVec];
};

template <typename scalar_t, int kVec>
__device__ __forceinline__ Pack<scalar_t, kVec> load_pack(const scalar_t* p) {
  Pack<scalar_t, kVec> out;
  if constexpr (sizeof(Pack<scalar_t, kVec>) == 16) {
    // Streaming load (evict first): every element is read exactly once.
    const int4 raw = __ldcs(reinterpret_cast<const int4*>(p));
    static_assert(sizeof(raw) == sizeof(out), "pack size");
    memcpy(&out, &raw, sizeof(out));
  } else {
#pragma unroll
    for (int i = 0; i < kVec; ++i) out.v[i] = p[i];
  }
  return out;
}

// Position k of sample b's token list, validated once per block: thread 0 asserts the range (the device assert
// that names a bad list) instead of every thread of the block asserting the same position; every thread clamps
// the position into [0, T), so that no thread reads outside the row before that assert stops the kernel. For a
// valid list the clamp changes nothing (same loads, same bits). (Prefetching the next kTokens positions during
// the current rows' products was tried and left out: 86 instead of 62-64 registers for the 16-byte kernels, 5
// instead of 8 resident blocks per SM, or 64 bytes of spills when capped at 64 registers.)
__device__ __forceinline__ int64_t token_at(const int32_t* __restrict__ idx, int64_t k, int64_t T) {
  const int64_t t = __ldg(idx + k);
  if (threadIdx.x == 0) {
    CUDA_KERNEL_ASSERT_MSG(t >= 0 && t < T, "culnig: token_index[b, k] is out of range [0, T)");
  }
  return min(max(t, static_cast<int64_t>(0)), T - 1);
}

// Step 1. out: [S, B, N] (S = gridDim.z), partial maxima of token split s; a split with no token writes the
// identity (-inf), which step 2 absorbs.
template <typename scalar_t, int kVec>
__global__ void __launch_bounds__(kThreads) max_kernel(
    const scalar_t* __restrict__ act, const scalar_t* __restrict__ grad, const int32_t* __restrict__ index,
    const int32_t* __restrict__ count, int64_t B, int64_t T, int64_t N, int64_t as0, int64_t as1, int64_t gs0,
    int64_t gs1, int64_t is0, at::opmath_type<scalar_t>* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (n0 >= N) return;  // no barriers in this kernel
  const int64_t splits = gridDim.z;
  const int64_t s = blockIdx.z;
  const int width = static_cast<int>(min(static_cast<int64_t>(kVec), N - n0));
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const int64_t c = count[b];
    CUDA_KERNEL_ASSERT_MSG(c >= 1 && c <= T, "culnig: token_count[b] is out of range [1, T]");
    const int64_t per = (c + splits - 1) / splits;
    int64_t k = s * per;
    const int64_t k_end = min(c, k + per);
    const int32_t* idx = index + b * is0;
    const scalar_t* a = act + b * as0 + n0;
    const scalar_t* g = grad + b * gs0 + n0;
    acc_t m[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) m[i] = max_identity<acc_t>();
    if (width == kVec) {
      for (; k + kTokens <= k_end; k += kTokens) {
        int64_t t[kTokens];
#pragma unroll
        for (int u = 0; u < kTokens; ++u) {
          t[u] = token_at(idx, k + u, T);
        }
        Pack<scalar_t, kVec> pa[kTokens], pg[kTokens];
#pragma unroll
        for (int u = 0; u < kTokens; ++u) {
          pa[u] = load_pack<scalar_t, kVec>(a + t[u] * as1);
          pg[u] = load_pack<scalar_t, kVec>(g + t[u] * gs1);
        }
#pragma unroll
        for (int u = 0; u < kTokens; ++u) {  // merged in token order: same result as one token at a time
#pragma unroll
          for (int i = 0; i < kVec; ++i) m[i] = running_max(m[i], product(pa[u].v[i], pg[u].v[i]));
        }
      }
      for (; k < k_end; ++k) {
        const int64_t t = token_at(idx, k, T);
        const Pack<scalar_t, kVec> pa = load_pack<scalar_t, kVec>(a + t * as1);
        const Pack<scalar_t, kVec> pg = load_pack<scalar_t, kVec>(g + t * gs1);
#pragma unroll
        for (int i = 0; i < kVec; ++i) m[i] = running_max(m[i], product(pa.v[i], pg.v[i]));
      }
    } else {  // the last, partial run of neurons of a row: scalar loads
      for (; k < k_end; ++k) {
        const int64_t t = token_at(idx, k, T);
#pragma unroll
        for (int i = 0; i < kVec; ++i) {  // constant indices keep m in registers
          if (i < width) m[i] = running_max(m[i], product(a[t * as1 + i], g[t * gs1 + i]));
        }
      }
    }
    acc_t* o = out + (s * B + b) * N + n0;
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      if (i < width) o[i] = m[i];
    }
  }
}

// Step 2 of max_attribution (only when S > 1): out[b, n] = partials combined in split (= token) order.
constexpr int kCombineThreads = 256;

template <typename acc_t>
__global__ void __launch_bounds__(kCombineThreads) combine_kernel(const acc_t* __restrict__ partial, int64_t S, int64_t BN, acc_t* __restrict__ out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < BN;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    acc_t m = partial[i];
    for (int64_t s = 1; s < S; ++s) m = running_max(m, partial[s * BN + i]);
    out[i] = m;
  }
}

// Step 2 of max_attribution_accumulate_: a block owns kColumns columns of acc for all groups and walks the
// samples kChunk at a time. (a) Its kRows warps combine the partials of the chunk's samples in split order
// (coalesced along the columns; kChunk / kRows samples per warp) into tile, and the chunk's groups and weights go
// to shared memory. (b) For each column, the thread of the first sample of each distinct group in the chunk
// adds the terms of that group's samples, in sample order, into a register that starts from acc and is written
// back once. Each acc element has one writer per chunk and chunks follow each other (barriers): its terms are
// added in sample order b = 0..B-1, with the same expression `sum += weighted_term(...)` as the serial
// read-modify-write it replaces (so also the same contraction into a fused multiply-add), hence the same bits.
// Deterministic, no atomics.
template <typename acc_t>
__global__ void __launch_bounds__(kColumns * kRows) combine_accumulate_kernel(
    const acc_t* __restrict__ partial, int64_t S, int64_t B, int64_t N, const float* __restrict__ weight,
    const int64_t* __restrict__ group, int64_t G, bool has_clamp, double clamp_min, double* __restrict__ acc,
    int64_t os0, int64_t os1) {
  __shared__ acc_t tile[kChunk][kColumns];
  __shared__ int64_t groups[kChunk];
  __shared__ float weights[kChunk];
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kColumns + threadIdx.x;
  const int tid = threadIdx.y * kColumns + threadIdx.x;
  for (int64_t b0 = 0; b0 < B; b0 += kChunk) {
    const int rows = static_cast<int>(min(static_cast<int64_t>(kChunk), B - b0));
    if (tid < rows) {
      const int64_t g = group[b0 + tid];
      CUDA_KERNEL_ASSERT_MSG(g >= 0 && g < G, "culnig: group[b] is out of range for acc");
      groups[tid] = g;
      weights[tid] = weight[b0 + tid];
    }
    for (int r = threadIdx.y; r < rows; r += kRows) {
      acc_t m = max_identity<acc_t>();
      if (n < N) {
        const int64_t b = b0 + r;
        m = partial[b * N + n];
        for (int64_t s = 1; s < S; ++s) m = running_max(m, partial[(s * B + b) * N + n]);
      }
      tile[r][threadIdx.x] = m;
    }
    __syncthreads();
    if (n < N) {
      for (int r = threadIdx.y; r < rows; r += kRows) {
        const int64_t g = groups[r];
        bool first = true;
        for (int q = 0; q < r && first; ++q) first = groups[q] != g;
        if (!first) continue;  // an earlier sample of the chunk leads this group
        double* cell = acc + g * os0 + n * os1;
        double sum = *cell;
        for (int q = r; q < rows; ++q) {
          if (groups[q] == g) sum += weighted_term(tile[q][threadIdx.x], weights[q], has_clamp, clamp_min);
        }
        *cell = sum;
      }
    }
    __syncthreads();  // acc written before the next chunk's leaders read it; tile and groups are reused
  }
}

int sm_count(int device) {
  static int counts[64] = {0};
  if (device < 0 || device >= 64) return 132;
  if (counts[device] == 0) {
    int n = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    counts[device] = std::max(1, n);
  }
  return counts[device];
}

bool aligned16(const at::Tensor& t, int64_t vec) {
  const auto p = reinterpret_cast<std::uintptr_t>(t.const_data_ptr());
  return p % 16 == 0 && (t.size(0) <= 1 || t.stride(0) % vec == 0) && (t.size(1) <= 1 || t.stride(1) % vec == 0);
}

// The token list to read: the given one, or one built on the device from the mask (old call signature:
// tensor ops only, so no sync here either).
struct DeviceTokens {
  at::Tensor index, count;
};
DeviceTokens device_tokens(const at::Tensor& mask, const TokenList& tokens) {
  if (tokens.given()) return {tokens.index->contiguous(), tokens.count->contiguous()};
  const int64_t B = mask.size(0), T = mask.size(1);
  const at::Tensor count = mask.sum(1, /*keepdim=*/false, at::kInt);
  const at::Tensor pos = at::arange(T, mask.options().dtype(at::kInt)).expand({B, T});
  const at::Tensor key = at::where(mask, pos, at::scalar_tensor(T, pos.options()));
  const at::Tensor ordered = std::get<0>(key.sort(/*stable=*/true, /*dim=*/1, /*descending=*/false));
  return {ordered.to(at::kInt).contiguous(), count};
}

// Step 1 into partial ([S, B, N] contiguous, opmath type); returns S.
int64_t launch_max(const at::Tensor& act, const at::Tensor& grad, const DeviceTokens& tok, at::Tensor* partial) {
  const int64_t B = act.size(0), T = act.size(1), N = act.size(2);
  const auto st = act.scalar_type();
  const int64_t vec = 16 / static_cast<int64_t>(c10::elementSize(st));
  const bool vector = aligned16(act, vec) && aligned16(grad, vec);
  const LaunchPlan plan = plan_launch(B, T, N, vector ? vec : 1, sm_count(act.get_device()));
  const int64_t splits = plan.splits;
  const auto acc_dtype = st == at::kDouble ? at::kDouble : at::kFloat;
  *partial = at::empty({splits, B, N}, act.options().dtype(acc_dtype));
  const dim3 grid(static_cast<unsigned>(plan.blocks_x), static_cast<unsigned>(plan.blocks_y),
                  static_cast<unsigned>(splits));
  const auto threads = static_cast<unsigned>(plan.threads);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, st, "culnig_max_attribution_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    auto run = [&](auto kernel) {
      kernel<<<grid, threads, 0, stream>>>(act.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                                            tok.index.const_data_ptr<int32_t>(), tok.count.const_data_ptr<int32_t>(),
                                            B, T, N, act.stride(0), act.stride(1), grad.stride(0), grad.stride(1),
                                            tok.index.stride(0), partial->mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (vector) {
      run(max_kernel<scalar_t, kVec>);
    } else {
      run(max_kernel<scalar_t, 1>);
    }
  });
  return splits;
}

at::Tensor max_attribution_cuda(const at::Tensor& act_in, const at::Tensor& grad_in, const at::Tensor& token_mask,
                                const std::optional<at::Tensor>& token_index,
                                const std::optional<at::Tensor>& token_count) {
  const TokenList tokens{token_index, token_count};
  check_attribution_inputs("culnig.max_attribution", act_in, grad_in, token_mask, tokens);
  const c10::cuda::CUDAGuard guard(act_in.device());
  const at::Tensor act = unit_stride_last_dim(act_in);
  const at::Tensor grad = unit_stride_last_dim(grad_in);
  const int64_t B = act.size(0), N = act.size(2);
  const auto out_dtype = act.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (B == 0 || N == 0) return at::empty({B, N}, act.options().dtype(out_dtype));
  const DeviceTokens tok = device_tokens(token_mask, tokens);
  at::Tensor partial;
  const int64_t splits = launch_max(act, grad, tok, &partial);
  if (splits == 1) return partial.view({B, N});
  at::Tensor out = at::empty({B, N}, act.options().dtype(out_dtype));
  const int64_t BN = B * N;
  const int threads = kCombineThreads;
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((BN + threads - 1) / threads, 65535));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(out_dtype, "culnig_combine_cuda", [&] {
    combine_kernel<scalar_t><<<blocks, threads, 0, stream>>>(partial.const_data_ptr<scalar_t>(), splits, BN,
                                                             out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

void max_attribution_accumulate_cuda(at::Tensor& acc, const at::Tensor& act_in, const at::Tensor& grad_in,
                                     const at::Tensor& token_mask, const at::Tensor& weight_in,
                                     const at::Tensor& group_in, std::optional<double> clamp_min,
                                     const std::optional<at::Tensor>& token_index,
                                     const std::optional<at::Tensor>& token_count) {
  const TokenList tokens{token_index, token_count};
  check_accumulate_inputs(acc, act_in, grad_in, token_mask, weight_in, group_in, tokens);
  const c10::cuda::CUDAGuard guard(act_in.device());
  const at::Tensor act = unit_stride_last_dim(act_in);
  const at::Tensor grad = unit_stride_last_dim(grad_in);
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor group = group_in.contiguous();
  const int64_t B = act.size(0), N = act.size(2);
  if (B == 0 || N == 0) return;
  const DeviceTokens tok = device_tokens(token_mask, tokens);
  at::Tensor partial;
  const int64_t splits = launch_max(act, grad, tok, &partial);
  const bool has_clamp = clamp_min.has_value();
  const double clamp = has_clamp ? *clamp_min : 0.0;
  const dim3 block(kColumns, kRows);
  const dim3 grid(static_cast<unsigned>((N + kColumns - 1) / kColumns));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(partial.scalar_type(), "culnig_accumulate_cuda", [&] {
    combine_accumulate_kernel<scalar_t><<<grid, block, 0, stream>>>(
        partial.const_data_ptr<scalar_t>(), splits, B, N, weight.const_data_ptr<float>(),
        group.const_data_ptr<int64_t>(), acc.size(0), has_clamp, clamp, acc.mutable_data_ptr<double>(),
        acc.stride(0), acc.stride(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace culnig

TORCH_LIBRARY_IMPL(culnig, CUDA, m) {
  m.impl("max_attribution", &culnig::max_attribution_cuda);
  m.impl("max_attribution_accumulate_", &culnig::max_attribution_accumulate_cuda);
}
