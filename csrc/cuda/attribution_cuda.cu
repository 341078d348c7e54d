// CUDA backend of the culnig ops.
//
// Kernel 1 (max_kernel) reads every element of act and grad once. A block is kThreadsN x kSplitT
// threads: threadIdx.x walks neurons (a warp = 32 consecutive neurons of one token row, so loads are
// coalesced along neurons, which are unit-stride), threadIdx.y splits the tokens (t = y, y + kSplitT, ...)
// so that short batches still put enough loads in flight. Each thread keeps its running max in a
// register; the kSplitT partial maxima are combined through shared memory. blockIdx.y walks samples.
// It writes the per-sample maxima m[B, N] (float32, float64 for float64 input).
//
// Kernel 2 (accumulate_kernel), for max_attribution_accumulate_ only: one thread per neuron adds
// weight[b] * max(clamp_min, m[b, n]) into acc[group[b], n] for b = 0..B-1 in order. We chose this
// second pass over atomicAdd on double: samples sharing a group then add in a fixed order, so the
// result is deterministic (atomics would make the float64 sums order-dependent from run to run), it
// matches the CPU backend's order, and the extra traffic (B*N maxima, one write and one read) is small
// next to reading B*T*N elements of act and grad twice.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
// c10/cuda headers only (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS/cuSPARSE headers that a
// minimal CUDA toolkit lacks).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../attribution.h"

namespace culnig {
namespace {

constexpr int kThreadsN = 64;  // neurons per block (2 warps wide)
constexpr int kSplitT = 4;     // token lanes per neuron
constexpr int kAccThreads = 256;
constexpr int64_t kMaxGridY = 65535;

template <typename scalar_t, typename acc_t>
__global__ void max_kernel(const scalar_t* __restrict__ act, const scalar_t* __restrict__ grad,
                           const bool* __restrict__ mask, int64_t B, int64_t T, int64_t N, int64_t as0,
                           int64_t as1, int64_t gs0, int64_t gs1, acc_t* __restrict__ out) {
  __shared__ acc_t partial[kSplitT][kThreadsN];
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreadsN + threadIdx.x;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    acc_t m = max_identity<acc_t>();
    if (n < N) {
      const scalar_t* a = act + b * as0 + n;
      const scalar_t* g = grad + b * gs0 + n;
      const bool* mb = mask + b * T;
      for (int64_t t = threadIdx.y; t < T; t += kSplitT) {
        if (mb[t]) m = running_max(m, product(a[t * as1], g[t * gs1]));
      }
    }
    // Every thread reaches the barriers (no early return), also those past the last neuron.
    partial[threadIdx.y][threadIdx.x] = m;
    __syncthreads();
    if (threadIdx.y == 0 && n < N) {
#pragma unroll
      for (int k = 1; k < kSplitT; ++k) m = running_max(m, partial[k][threadIdx.x]);
      out[b * N + n] = m;
    }
    __syncthreads();  // partial is reused for the next sample
  }
}

template <typename acc_t>
__global__ void accumulate_kernel(const acc_t* __restrict__ maxima, const float* __restrict__ weight,
                                  const int64_t* __restrict__ group, int64_t B, int64_t N, bool has_clamp,
                                  double clamp_min, double* __restrict__ acc, int64_t os0, int64_t os1) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  // One thread owns column n of acc for all groups: no race, fixed (sample) order.
  for (int64_t b = 0; b < B; ++b) {
    acc[group[b] * os0 + n * os1] += weighted_term(maxima[b * N + n], weight[b], has_clamp, clamp_min);
  }
}

// Launches max_kernel into out ([B, N], float32 or float64, contiguous).
void launch_max(const at::Tensor& act, const at::Tensor& grad, const at::Tensor& mask, at::Tensor& out) {
  const int64_t B = act.size(0), T = act.size(1), N = act.size(2);
  if (B == 0 || N == 0) return;
  const dim3 block(kThreadsN, kSplitT);
  const dim3 grid(static_cast<unsigned>((N + kThreadsN - 1) / kThreadsN),
                  static_cast<unsigned>(std::min<int64_t>(B, kMaxGridY)));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, act.scalar_type(), "culnig_max_attribution_cuda", [&] {
    using acc_t = typename acc_type<scalar_t>::type;
    max_kernel<scalar_t, acc_t><<<grid, block, 0, stream>>>(
        act.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(), mask.const_data_ptr<bool>(), B, T,
        N, act.stride(0), act.stride(1), grad.stride(0), grad.stride(1), out.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor max_attribution_cuda(const at::Tensor& act_in, const at::Tensor& grad_in,
                                const at::Tensor& token_mask) {
  check_attribution_inputs("culnig.max_attribution", act_in, grad_in, token_mask);
  const c10::cuda::CUDAGuard guard(act_in.device());
  const at::Tensor act = unit_stride_last_dim(act_in);
  const at::Tensor grad = unit_stride_last_dim(grad_in);
  const at::Tensor mask = token_mask.contiguous();
  const auto out_dtype = act.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty({act.size(0), act.size(2)}, act.options().dtype(out_dtype));
  launch_max(act, grad, mask, out);
  return out;
}

void max_attribution_accumulate_cuda(at::Tensor& acc, const at::Tensor& act_in, const at::Tensor& grad_in,
                                     const at::Tensor& token_mask, const at::Tensor& weight_in,
                                     const at::Tensor& group_in, std::optional<double> clamp_min) {
  check_accumulate_inputs(acc, act_in, grad_in, token_mask, weight_in, group_in);
  const c10::cuda::CUDAGuard guard(act_in.device());
  const at::Tensor act = unit_stride_last_dim(act_in);
  const at::Tensor grad = unit_stride_last_dim(grad_in);
  const at::Tensor mask = token_mask.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor group = group_in.contiguous();
  const int64_t B = act.size(0), N = act.size(2);
  if (B == 0 || N == 0) return;
  const auto max_dtype = act.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor maxima = at::empty({B, N}, act.options().dtype(max_dtype));
  launch_max(act, grad, mask, maxima);
  const bool has_clamp = clamp_min.has_value();
  const double clamp = has_clamp ? *clamp_min : 0.0;
  const dim3 grid(static_cast<unsigned>((N + kAccThreads - 1) / kAccThreads));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(max_dtype, "culnig_accumulate_cuda", [&] {
    accumulate_kernel<scalar_t><<<grid, kAccThreads, 0, stream>>>(
        maxima.const_data_ptr<scalar_t>(), weight.const_data_ptr<float>(), group.const_data_ptr<int64_t>(), B,
        N, has_clamp, clamp, acc.mutable_data_ptr<double>(), acc.stride(0), acc.stride(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace culnig

TORCH_LIBRARY_IMPL(culnig, CUDA, m) {
  m.impl("max_attribution", &culnig::max_attribution_cuda);
  m.impl("max_attribution_accumulate_", &culnig::max_attribution_accumulate_cuda);
}
