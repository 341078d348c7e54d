// CPU backend of the culnig ops: reads act and grad once, in memory order, with explicit SIMD.
//
// Work item = (sample b, range of neurons). For one item the loop runs over the sample's counted
// (mask-true) tokens in groups of four, and over the neurons inside: the four rows are multiplied with
// their gradients, reduced to one max and merged into the running max, which lives in the item's own
// slice of the output (tens of KiB: L2-resident). Four tokens per pass means eight sequential read
// streams (software-prefetched) and one read-modify-write of the running max per four tokens instead of
// one per token. Padding tokens are never read. The vector code uses AVX-512 or AVX2 (+F16C for
// float16) intrinsics when the build enables them (-march=native, see culnig_ext/_build.py): explicit
// intrinsics because the NaN-propagating select of attribution.h and the bf16/fp16 conversions did not
// auto-vectorise well; other builds use the scalar loop.
//
// Threads: at::parallel_for is an inline OpenMP loop in the ATen headers, so this file must be compiled
// with -fopenmp (culnig_ext/_build.py); without it the op silently ran on one thread.
//
// NaN: the vector max (maxps) drops NaN, so each pass also ORs an "unordered" compare of the products
// into a flag; an item whose flag is set (a NaN product somewhere: a broken gradient, rare) is recomputed
// with the scalar running_max of attribution.h, which propagates NaN like torch.amax. Ties (+0/-0) keep
// the earliest token, exactly like the sequential running_max, so results are bit-identical to it.
//
// Scheduling: items are handed out dynamically (atomic counter), longest samples first, so that samples
// with different amounts of padding do not leave one thread idle at the end. A sample is split into several neuron ranges only when there are too
// few samples to keep every thread busy.
//
// Races: several samples may share a group. max_attribution_accumulate_ therefore works in two passes,
// like the CUDA backend: (1) per-sample maxima [B, N], each item writing its own slice; (2) the weighted
// add into acc, parallel over neuron ranges with the samples in order inside. Each thread owns its columns
// of acc for all groups, so no two threads write the same element, and the sum order per element is the
// sample order (deterministic, same as on CUDA). Pass 2 touches B*N*4 bytes, ~1% of pass 1 at T = 128.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <numeric>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../attribution.h"

namespace culnig {
namespace {

// Tuning knobs, overridable at compile time (-D...) for other machines. Measured on the 2-core AVX-512
// dev machine (B=16, T=128, N=6144/15360, float32/bfloat16):
//  CULNIG_CPU_BLOCK  neurons of an item processed per sweep over its tokens. Whole rows (the default,
//                    i.e. no blocking) were ~5% faster than 4096 or 1024: the running max of a row (24-60
//                    KiB of float32) stays in L2, and the token rows are read as long sequential runs.
//  CULNIG_GROUP      tokens merged per pass (2: ~5-10% slower for bfloat16; 8: no better than 4).
//  CULNIG_PREFETCH   software prefetch distance in elements along each row (0 = off); 512 was ~15-20%
//                    faster for bfloat16 (eight streams are more than the hardware prefetcher tracks
//                    well), neutral for float32.
#ifndef CULNIG_CPU_BLOCK
#define CULNIG_CPU_BLOCK (int64_t{1} << 40)
#endif
#ifndef CULNIG_GROUP
#define CULNIG_GROUP 4
#endif
#ifndef CULNIG_PREFETCH
#define CULNIG_PREFETCH 512
#endif
constexpr int64_t kBlock = CULNIG_CPU_BLOCK;
constexpr int kGroup = CULNIG_GROUP;
constexpr int64_t kPrefetch = CULNIG_PREFETCH;
static_assert(kGroup >= 1, "CULNIG_GROUP must be >= 1");

inline void prefetch(const void* p) {
#if defined(__GNUC__) || defined(__clang__)
  __builtin_prefetch(p, 0, 3);
#else
  (void)p;
#endif
}

// ---------------------------------------------------------------------------------------------------
// SIMD loads/arithmetic per input dtype. Simd<scalar_t>::kWidth == 0 means "no vector path".
// load() converts kWidth inputs to acc_t lanes exactly (bf16: shift into the high half; fp16: F16C).
// ---------------------------------------------------------------------------------------------------
template <typename scalar_t>
struct Simd {
  static constexpr int kWidth = 0;
};

#if defined(__AVX512F__)
struct F32x16 {
  using vec = __m512;
  using flag = __mmask16;
  static constexpr int kWidth = 16;
  static vec mul(vec a, vec b) { return _mm512_mul_ps(a, b); }
  // a > b ? a : b (b when unordered), i.e. running_max(b, a) for non-NaN a.
  static vec max(vec a, vec b) { return _mm512_max_ps(a, b); }
  static flag no_nan() { return 0; }
  static flag nan_or(flag f, vec a, vec b) { return f | _mm512_cmp_ps_mask(a, b, _CMP_UNORD_Q); }
  static bool any(flag f) { return f != 0; }
  static vec loadacc(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, vec v) { _mm512_storeu_ps(p, v); }
};
struct F64x8 {
  using vec = __m512d;
  using flag = __mmask8;
  static constexpr int kWidth = 8;
  static vec mul(vec a, vec b) { return _mm512_mul_pd(a, b); }
  static vec max(vec a, vec b) { return _mm512_max_pd(a, b); }
  static flag no_nan() { return 0; }
  static flag nan_or(flag f, vec a, vec b) { return f | _mm512_cmp_pd_mask(a, b, _CMP_UNORD_Q); }
  static bool any(flag f) { return f != 0; }
  static vec loadacc(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, vec v) { _mm512_storeu_pd(p, v); }
};
template <>
struct Simd<float> : F32x16 {
  static vec load(const float* p) { return _mm512_loadu_ps(p); }
};
template <>
struct Simd<c10::BFloat16> : F32x16 {
  static vec load(const c10::BFloat16* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
};
template <>
struct Simd<c10::Half> : F32x16 {
  static vec load(const c10::Half* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
};
template <>
struct Simd<double> : F64x8 {
  static vec load(const double* p) { return _mm512_loadu_pd(p); }
};
#elif defined(__AVX2__)
struct F32x8 {
  using vec = __m256;
  using flag = __m256;
  static constexpr int kWidth = 8;
  static vec mul(vec a, vec b) { return _mm256_mul_ps(a, b); }
  static vec max(vec a, vec b) { return _mm256_max_ps(a, b); }
  static flag no_nan() { return _mm256_setzero_ps(); }
  static flag nan_or(flag f, vec a, vec b) { return _mm256_or_ps(f, _mm256_cmp_ps(a, b, _CMP_UNORD_Q)); }
  static bool any(flag f) { return _mm256_movemask_ps(f) != 0; }
  static vec loadacc(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, vec v) { _mm256_storeu_ps(p, v); }
};
struct F64x4 {
  using vec = __m256d;
  using flag = __m256d;
  static constexpr int kWidth = 4;
  static vec mul(vec a, vec b) { return _mm256_mul_pd(a, b); }
  static vec max(vec a, vec b) { return _mm256_max_pd(a, b); }
  static flag no_nan() { return _mm256_setzero_pd(); }
  static flag nan_or(flag f, vec a, vec b) { return _mm256_or_pd(f, _mm256_cmp_pd(a, b, _CMP_UNORD_Q)); }
  static bool any(flag f) { return _mm256_movemask_pd(f) != 0; }
  static vec loadacc(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, vec v) { _mm256_storeu_pd(p, v); }
};
template <>
struct Simd<float> : F32x8 {
  static vec load(const float* p) { return _mm256_loadu_ps(p); }
};
template <>
struct Simd<c10::BFloat16> : F32x8 {
  static vec load(const c10::BFloat16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
};
#if defined(__F16C__)
template <>
struct Simd<c10::Half> : F32x8 {
  static vec load(const c10::Half* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
};
#endif
template <>
struct Simd<double> : F64x4 {
  static vec load(const double* p) { return _mm256_loadu_pd(p); }
};
#endif

// Where one sample's rows start and which of its tokens count.
template <typename scalar_t>
struct Rows {
  const scalar_t* a;  // act + b * as0 (token 0, neuron 0)
  const scalar_t* g;
  int64_t as1, gs1;   // token strides
  const int64_t* tok; // counted token indices, ascending
  int64_t ntok;
};

// Exact scalar running max (attribution.h semantics, NaN-propagating) over neurons [n0, n1).
template <typename scalar_t, typename acc_t>
void scalar_max(const Rows<scalar_t>& r, int64_t n0, int64_t n1, acc_t* __restrict__ out) {
  for (int64_t n = n0; n < n1; ++n) out[n] = max_identity<acc_t>();
  for (int64_t k = 0; k < r.ntok; ++k) {
    const scalar_t* __restrict__ at = r.a + r.tok[k] * r.as1;
    const scalar_t* __restrict__ gt = r.g + r.tok[k] * r.gs1;
    for (int64_t n = n0; n < n1; ++n) out[n] = running_max(out[n], product(at[n], gt[n]));
  }
}

// Vector running max over neurons [n0, n1) (n1 - n0 a multiple of kWidth). Returns false if a NaN
// product was seen, in which case out[n0, n1) is not valid and the caller recomputes it exactly.
template <typename scalar_t, typename acc_t>
bool vector_max(const Rows<scalar_t>& r, int64_t n0, int64_t n1, acc_t* __restrict__ out) {
  using S = Simd<scalar_t>;
  constexpr int W = S::kWidth;
  using vec = typename S::vec;
  typename S::flag nan = S::no_nan();
  const scalar_t* a = r.a;
  const scalar_t* g = r.g;
  int64_t k = 0;
  // The first pass initialises the running max from the products (no -inf fill, no read of out).
  if (r.ntok >= 2) {
    const scalar_t* a0 = a + r.tok[0] * r.as1; const scalar_t* g0 = g + r.tok[0] * r.gs1;
    const scalar_t* a1 = a + r.tok[1] * r.as1; const scalar_t* g1 = g + r.tok[1] * r.gs1;
    for (int64_t n = n0; n < n1; n += W) {
      const vec p0 = S::mul(S::load(a0 + n), S::load(g0 + n));
      const vec p1 = S::mul(S::load(a1 + n), S::load(g1 + n));
      nan = S::nan_or(nan, p0, p1);
      S::store(out + n, S::max(p1, p0));  // ties keep the earlier token (p0)
    }
    k = 2;
  } else {
    const scalar_t* a0 = a + r.tok[0] * r.as1; const scalar_t* g0 = g + r.tok[0] * r.gs1;
    for (int64_t n = n0; n < n1; n += W) {
      const vec p0 = S::mul(S::load(a0 + n), S::load(g0 + n));
      nan = S::nan_or(nan, p0, p0);
      S::store(out + n, p0);
    }
    k = 1;
  }
  constexpr int G = kGroup;
  for (; k + G <= r.ntok; k += G) {
    const scalar_t* ap[G];
    const scalar_t* gp[G];
    for (int i = 0; i < G; ++i) {
      ap[i] = a + r.tok[k + i] * r.as1;
      gp[i] = g + r.tok[k + i] * r.gs1;
    }
    for (int64_t n = n0; n < n1; n += W) {
      vec p[G];
      for (int i = 0; i < G; ++i) {
        if constexpr (kPrefetch > 0) {  // a prefetch past the end of a row is harmless (no fault)
          prefetch(ap[i] + n + kPrefetch);
          prefetch(gp[i] + n + kPrefetch);
        }
        p[i] = S::mul(S::load(ap[i] + n), S::load(gp[i] + n));
      }
      for (int i = 0; i + 1 < G; i += 2) nan = S::nan_or(nan, p[i], p[i + 1]);
      if constexpr (G % 2 == 1) nan = S::nan_or(nan, p[G - 1], p[G - 1]);
      // max(x, y) keeps y on ties: earlier tokens (and the running max) are always the second operand.
      vec q = p[G - 1];
      for (int i = G - 2; i >= 0; --i) q = S::max(q, p[i]);
      S::store(out + n, S::max(q, S::loadacc(out + n)));
    }
  }
  for (; k < r.ntok; ++k) {
    const scalar_t* a0 = a + r.tok[k] * r.as1; const scalar_t* g0 = g + r.tok[k] * r.gs1;
    for (int64_t n = n0; n < n1; n += W) {
      const vec p0 = S::mul(S::load(a0 + n), S::load(g0 + n));
      nan = S::nan_or(nan, p0, p0);
      S::store(out + n, S::max(p0, S::loadacc(out + n)));
    }
  }
  return !S::any(nan);
}

// Running max over neurons [n0, n1) of one sample, written to out[n0, n1).
template <typename scalar_t, typename acc_t>
void item_max(const Rows<scalar_t>& r, int64_t n0, int64_t n1, acc_t* out) {
  constexpr int W = Simd<scalar_t>::kWidth;
  if constexpr (W > 0) {
    const int64_t nv = n0 + (n1 - n0) / W * W;  // end of the vector part
    for (int64_t s = n0; s < nv; s += kBlock) {
      const int64_t e = std::min(nv, s + kBlock);
      if (!vector_max<scalar_t, acc_t>(r, s, e, out)) scalar_max<scalar_t, acc_t>(r, s, e, out);
    }
    if (nv < n1) scalar_max<scalar_t, acc_t>(r, nv, n1, out);
  } else {
    for (int64_t s = n0; s < n1; s += kBlock) scalar_max<scalar_t, acc_t>(r, s, std::min(n1, s + kBlock), out);
  }
}

// out[b, n] = running max over the counted tokens, for all samples and neurons ([B, N] contiguous, acc_t).
template <typename scalar_t, typename acc_t>
void compute_maxima(const at::Tensor& act, const at::Tensor& grad, const at::Tensor& mask, acc_t* out) {
  const int64_t B = act.size(0), T = act.size(1), N = act.size(2);
  const scalar_t* a = act.const_data_ptr<scalar_t>();
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const bool* m = mask.const_data_ptr<bool>();
  const int64_t as0 = act.stride(0), as1 = act.stride(1);
  const int64_t gs0 = grad.stride(0), gs1 = grad.stride(1);

  // Counted token indices per sample (every sample has at least one: checked by the caller).
  std::vector<int64_t> tok(B * T);
  std::vector<int64_t> ntok(B, 0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      if (m[b * T + t]) tok[b * T + ntok[b]++] = t;
    }
  }

  // Neuron ranges per sample: one, unless there are fewer than ~4 items per thread. Ranges are multiples
  // of 64 neurons so that only the last one has a scalar tail.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t want = (4 * threads + B - 1) / B;
  const int64_t splits = std::max<int64_t>(1, std::min(want, N / 512));
  const int64_t chunk = ((N + splits - 1) / splits + 63) / 64 * 64;
  const int64_t nchunks = (N + chunk - 1) / chunk;

  // Longest samples first, then dynamic hand-out: balances samples with different padding.
  std::vector<int64_t> order(B);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return ntok[x] > ntok[y]; });
  const int64_t items = B * nchunks;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < items;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      const int64_t b = order[i / nchunks];
      const int64_t n0 = (i % nchunks) * chunk;
      const int64_t n1 = std::min(N, n0 + chunk);
      const Rows<scalar_t> r{a + b * as0, g + b * gs0, as1, gs1, tok.data() + b * T, ntok[b]};
      item_max<scalar_t, acc_t>(r, n0, n1, out + b * N);
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
  // Pass 1: per-sample maxima [B, N].
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
