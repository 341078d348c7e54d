// CPU backend of the culnig ops: a blocked loop that reads act and grad once.
//
// Work is split into blocks of kBlock contiguous neurons. For one (sample, neuron block) the loop runs
// over tokens outside and neurons inside, keeping the running max of act*grad in a small local buffer
// (L1-resident), so the inner loop is a unit-stride, vectorisable multiply + max over neurons.
//
// Races: several samples may share a group. max_attribution_accumulate_ therefore works in two passes,
// like the CUDA backend: (1) per-sample maxima [B, N], parallel over (sample, neuron block) pairs, each
// writing its own slice; (2) the weighted add into acc, parallel over neuron ranges with the samples in
// order inside. Each thread owns its columns of acc for all groups, so no two threads write the same
// element, and the sum order per element is the sample order (deterministic, same as on CUDA).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "../attribution.h"

namespace culnig {
namespace {

// 2048 neurons = 8 KiB of float32 maxima per block: stays in L1 next to the streamed rows, and the rows
// read per token (4-8 KiB contiguous) are long enough for the hardware prefetcher (512 was ~15% slower
// for bfloat16 on the 2-core dev machine; 4096 no better).
// Overridable at compile time (-DCULNIG_CPU_BLOCK=...) for tuning on other machines.
#ifndef CULNIG_CPU_BLOCK
#define CULNIG_CPU_BLOCK 2048
#endif
constexpr int64_t kBlock = CULNIG_CPU_BLOCK;

// Running max of act*grad over the masked tokens of one sample, for neurons [0, len) of a block.
// a, g: pointers to (b, t=0, n0); as1, gs1: token strides; mask: [T] of this sample.
template <typename scalar_t, typename acc_t>
inline void block_max(const scalar_t* __restrict__ a, const scalar_t* __restrict__ g, int64_t as1,
                      int64_t gs1, const bool* __restrict__ mask, int64_t T, int64_t len,
                      acc_t* __restrict__ buf) {
  for (int64_t j = 0; j < len; ++j) buf[j] = max_identity<acc_t>();
  for (int64_t t = 0; t < T; ++t) {
    if (!mask[t]) continue;  // padding tokens are never read
    const scalar_t* __restrict__ at = a + t * as1;
    const scalar_t* __restrict__ gt = g + t * gs1;
    for (int64_t j = 0; j < len; ++j) {
      buf[j] = running_max(buf[j], product(at[j], gt[j]));
    }
  }
}

// out[b, n] = running max over the masked tokens, for all samples and neurons ([B, N] contiguous, acc_t).
// Parallel over (sample, neuron block) pairs; each pair writes its own slice of out: no race.
template <typename scalar_t, typename acc_t>
void compute_maxima(const at::Tensor& act, const at::Tensor& grad, const at::Tensor& mask, acc_t* out) {
  const int64_t B = act.size(0), T = act.size(1), N = act.size(2);
  const int64_t nblocks = (N + kBlock - 1) / kBlock;
  const scalar_t* a = act.const_data_ptr<scalar_t>();
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const bool* m = mask.const_data_ptr<bool>();
  const int64_t as0 = act.stride(0), as1 = act.stride(1);
  const int64_t gs0 = grad.stride(0), gs1 = grad.stride(1);
  at::parallel_for(0, B * nblocks, 1, [&](int64_t begin, int64_t end) {
    acc_t buf[kBlock];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / nblocks;
      const int64_t n0 = (i % nblocks) * kBlock;
      const int64_t len = std::min(kBlock, N - n0);
      block_max<scalar_t, acc_t>(a + b * as0 + n0, g + b * gs0 + n0, as1, gs1, m + b * T, T, len, buf);
      std::copy(buf, buf + len, out + b * N + n0);
    }
  });
}

at::Tensor max_attribution_cpu(const at::Tensor& act_in, const at::Tensor& grad_in,
                               const at::Tensor& token_mask) {
  check_attribution_inputs("culnig.max_attribution", act_in, grad_in, token_mask);
  const at::Tensor act = unit_stride_last_dim(act_in);
  const at::Tensor grad = unit_stride_last_dim(grad_in);
  const at::Tensor mask = token_mask.contiguous();  // [B, T] bool, tiny
  const auto out_dtype = act.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty({act.size(0), act.size(2)}, act.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, act.scalar_type(), "culnig_max_attribution_cpu", [&] {
    using acc_t = typename acc_type<scalar_t>::type;
    compute_maxima<scalar_t, acc_t>(act, grad, mask, out.mutable_data_ptr<acc_t>());
  });
  return out;
}

void max_attribution_accumulate_cpu(at::Tensor& acc, const at::Tensor& act_in, const at::Tensor& grad_in,
                                    const at::Tensor& token_mask, const at::Tensor& weight_in,
                                    const at::Tensor& group_in, std::optional<double> clamp_min) {
  check_accumulate_inputs(acc, act_in, grad_in, token_mask, weight_in, group_in);
  const at::Tensor act = unit_stride_last_dim(act_in);
  const at::Tensor grad = unit_stride_last_dim(grad_in);
  const at::Tensor mask = token_mask.contiguous();
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor group = group_in.contiguous();
  const int64_t B = act.size(0), N = act.size(2);
  if (B == 0 || N == 0) return;
  const bool has_clamp = clamp_min.has_value();
  const double clamp = has_clamp ? *clamp_min : 0.0;
  const auto max_dtype = act.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // Pass 1: per-sample maxima [B, N] (B*N*4 bytes, ~1% of the bytes of act and grad at T = 128).
  at::Tensor maxima = at::empty({B, N}, act.options().dtype(max_dtype));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, act.scalar_type(), "culnig_max_attribution_accumulate_cpu", [&] {
    using acc_t = typename acc_type<scalar_t>::type;
    compute_maxima<scalar_t, acc_t>(act, grad, mask, maxima.mutable_data_ptr<acc_t>());
    // Pass 2: parallel over neuron ranges, samples in order inside (see the race note at the top).
    const acc_t* mx = maxima.const_data_ptr<acc_t>();
    const float* w = weight.const_data_ptr<float>();
    const int64_t* grp = group.const_data_ptr<int64_t>();
    double* out = acc.mutable_data_ptr<double>();
    const int64_t os0 = acc.stride(0), os1 = acc.stride(1);
    at::parallel_for(0, N, 2048, [&](int64_t n_begin, int64_t n_end) {
      for (int64_t b = 0; b < B; ++b) {
        double* row = out + grp[b] * os0;
        const acc_t* mb = mx + b * N;
        const float wb = w[b];
        for (int64_t n = n_begin; n < n_end; ++n) {
          row[n * os1] += weighted_term(mb[n], wb, has_clamp, clamp);
        }
      }
    });
  });
}

}  // namespace
}  // namespace culnig

TORCH_LIBRARY_IMPL(culnig, CPU, m) {
  m.impl("max_attribution", &culnig::max_attribution_cpu);
  m.impl("max_attribution_accumulate_", &culnig::max_attribution_accumulate_cpu);
}
