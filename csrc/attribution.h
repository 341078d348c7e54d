// Fused gradient x activation attribution: the per-element math, written once.
//
// Both backends (csrc/cpu/attribution_cpu.cpp and csrc/cuda/attribution_cuda.cu) compute, for every
// sample b and neuron n,
//     m[b, n] = max over tokens t with token_mask[b, t] of  act[b, t, n] * grad[b, t, n]
// and, for the accumulating op,
//     acc[group[b], n] += weight[b] * max(clamp_min, m[b, n])        (no clamp when clamp_min is None).
// The three steps below (product, running max, weighted add) are the only arithmetic; keeping them here
// guarantees the CPU and CUDA results agree bit for bit on the same maxima.
//
// The second half of this header declares the input checks shared by both backends (defined in
// csrc/culnig.cpp) so that every backend refuses exactly the same inputs with the same messages.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>
#include <limits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define CULNIG_HD __host__ __device__ __forceinline__
#else
#define CULNIG_HD inline
#endif

namespace culnig {

// The type the product and running max are formed in: ATen's at::opmath_type, i.e. float32 for
// float32/bfloat16/float16 inputs and float64 for float64 inputs. The product is never rounded back to the
// input dtype (a bf16 product would lose ~3 significant digits, and the product of two bf16/fp16 values is
// exact in float32).
template <typename scalar_t>
CULNIG_HD at::opmath_type<scalar_t> product(scalar_t a, scalar_t g) {
  using acc_t = at::opmath_type<scalar_t>;
  return static_cast<acc_t>(a) * static_cast<acc_t>(g);
}

// Identity element of the running max.
template <typename acc_t>
CULNIG_HD acc_t max_identity() {
  return -std::numeric_limits<acc_t>::infinity();
}

// Running max that propagates NaN like torch.amax does (a NaN gradient must not be silently dropped).
// Written as a select so compilers vectorise it (cmp + blend).
template <typename acc_t>
CULNIG_HD acc_t running_max(acc_t current, acc_t value) {
  return (value > current || value != value) ? value : current;
}

// The term added into acc for one (sample, neuron): weight * max(clamp_min, m), in float64.
// NaN in m stays NaN (like torch.clamp), so a broken gradient is visible in the table.
template <typename acc_t>
CULNIG_HD double weighted_term(acc_t m, float weight, bool has_clamp, double clamp_min) {
  double v = static_cast<double>(m);
  if (has_clamp && v < clamp_min) {
    v = clamp_min;
  }
  return static_cast<double>(weight) * v;
}

}  // namespace culnig

// ---------------------------------------------------------------------------------------------------
// Shared input checks (host only). Defined in csrc/culnig.cpp; the words are in csrc/messages.def.
// ---------------------------------------------------------------------------------------------------
#include <ATen/core/Tensor.h>

#include <optional>

namespace culnig {

// The compact token list of a batch (culnig_ext.ops.token_list, built once per batch and shared by every
// site): index [B, T] int32 holds, in row b, the positions of sample b's counted tokens in ascending order
// in its first count[b] entries; count [B] int32. When it is given, the kernels read it instead of the
// token mask (whose values are then not looked at: only its shape is checked).
struct TokenList {
  const std::optional<at::Tensor>& index;
  const std::optional<at::Tensor>& count;
  bool given() const { return index.has_value(); }
};

// Checks act/grad/token_mask ([B, T, N] same dtype float32/bfloat16/float16/float64, same device; mask
// [B, T] bool) and the token list's structure, then the values:
//   - without a token list: every sample has a counted token (on CUDA one small device->host copy);
//   - with a token list on the CPU: its counts and positions are in range (read in place, no sync);
//   - with a token list on CUDA: nothing on the host (no sync); the kernels assert the ranges.
// Throws c10::Error subclasses (ValueError / TypeError / IndexError in Python) naming the op and argument.
void check_attribution_inputs(const char* op, const at::Tensor& act, const at::Tensor& grad,
                              const at::Tensor& token_mask, const TokenList& tokens);

// All checks of max_attribution_accumulate_: the above plus acc [G, N] float64 on act's device, weight [B]
// float32, group [B] int64 with 0 <= group[b] < G (value checked like the token list: on the host without a
// list or on the CPU, by a device assert on CUDA with a list). Called before anything is written.
void check_accumulate_inputs(const at::Tensor& acc, const at::Tensor& act, const at::Tensor& grad,
                             const at::Tensor& token_mask, const at::Tensor& weight, const at::Tensor& group,
                             const TokenList& tokens);

// act/grad with last-dim stride 1 are used as they are (column slices of fused projections are read in
// place); only a tensor whose last dim is not unit-stride is copied (rare fallback).
at::Tensor unit_stride_last_dim(const at::Tensor& t);

}  // namespace culnig
