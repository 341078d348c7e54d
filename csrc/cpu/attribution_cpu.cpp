// CPU backend of the culnig ops: input checks, the token list, the choice of the kernel variant, pass 2.
//
// Pass 1 (per-sample maxima [B, N]) runs in one of three variants of the same kernel body
// (attribution_cpu_kernel.inc), compiled for the baseline, AVX2 and AVX-512; which one is chosen once
// (see capability() below), like ATen's own CPU capability, so one binary runs on any x86-64 CPU.
//
// Races: several samples may share a group. max_attribution_accumulate_ therefore works in two passes,
// like the CUDA backend: (1) per-sample maxima [B, N], each item writing its own slice; (2) the weighted
// add into acc, parallel over neuron ranges with the samples in order inside. Each thread owns its columns
// of acc for all groups, so no two threads write the same element, and the sum order per element is the
// sample order (deterministic, same as on CUDA). Pass 2 touches B*N*4 bytes, ~1% of pass 1 at T = 128.
//
// Threads: at::parallel_for is an inline OpenMP loop in the ATen headers, so these files must be compiled
// with -fopenmp (culnig_ext/_build.py); without it the op silently ran on one thread.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <cstdlib>
#include <mutex>
#include <optional>
#include <vector>

#include "../attribution.h"
#include "attribution_cpu.h"

namespace culnig {
namespace cpu {
namespace {

const char* const kNames[] = {"default", "avx2", "avx512"};

MaxFn variant(int level) {
  switch (level) {
    case 2: return maxima_avx512_fn();
    case 1: return maxima_avx2_fn();
    default: return maxima_default_fn();
  }
}

// Highest level this CPU (and its OS: __builtin_cpu_supports checks the saved register state) can run.
int cpu_level() {
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return avx512 ? 2 : avx2 ? 1 : 0;
#else
  return 0;
#endif
}

// Highest level both the CPU and this build can run.
int runnable_level() {
  int level = cpu_level();
  while (level > 0 && variant(level) == nullptr) --level;
  return level;
}

// ATen's own choice (honours ATEN_CPU_CAPABILITY): "AVX512", "AVX2", "DEFAULT", ...
int aten_level() {
  const std::string aten = at::get_cpu_capability();
  return aten == "AVX512" ? 2 : aten == "AVX2" ? 1 : 0;
}

int parse_level(const std::string& name, const char* where) {
  for (int level = 0; level < 3; ++level) {
    if (name == kNames[level]) {
      TORCH_CHECK_VALUE(level <= runnable_level(), where, "=", name, ": this CPU (or this build) cannot run the ",
                        name, " kernel; it can run: ", kNames[runnable_level()], " and below");
      return level;
    }
  }
  TORCH_CHECK_VALUE(false, where, "=", name, " is not a CPU capability; use default, avx2 or avx512");
  return 0;
}

std::mutex g_mutex;
std::optional<int> g_level;

int current_level() {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (!g_level) {
    const char* env = std::getenv("CULNIG_CPU_CAPABILITY");
    g_level = (env != nullptr && *env != '\0') ? parse_level(env, "CULNIG_CPU_CAPABILITY")
                                               : std::min(runnable_level(), aten_level());
  }
  return *g_level;
}

}  // namespace

std::string capability() { return kNames[current_level()]; }

std::vector<std::string> capabilities() {
  std::vector<std::string> out;
  for (int level = 0; level <= runnable_level(); ++level) out.emplace_back(kNames[level]);
  return out;
}

void set_capability(const std::string& name) {
  const int level = parse_level(name, "culnig.set_cpu_capability");
  std::lock_guard<std::mutex> lock(g_mutex);
  g_level = level;
}

}  // namespace cpu

namespace {

// Runs pass 1 into out ([B, N] contiguous, opmath type) with the given token list, or with one built here
// from the mask (old call signature).
void compute_maxima(const at::Tensor& act, const at::Tensor& grad, const at::Tensor& token_mask,
                    const TokenList& tokens, at::Tensor& out) {
  const int64_t B = act.size(0), T = act.size(1), N = act.size(2);
  if (B == 0 || N == 0) return;
  std::vector<int32_t> index_buf, count_buf;
  const int32_t* index;
  const int32_t* count;
  int64_t is0;
  at::Tensor index_t, count_t;
  if (tokens.given()) {
    index_t = tokens.index->contiguous();
    count_t = tokens.count->contiguous();
    index = index_t.const_data_ptr<int32_t>();
    count = count_t.const_data_ptr<int32_t>();
    is0 = T;
  } else {
    const at::Tensor mask = token_mask.contiguous();  // [B, T] bool, tiny
    const bool* m = mask.const_data_ptr<bool>();
    index_buf.resize(B * T);
    count_buf.assign(B, 0);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        if (m[b * T + t]) index_buf[b * T + count_buf[b]++] = static_cast<int32_t>(t);
      }
    }
    index = index_buf.data();
    count = count_buf.data();
    is0 = T;
  }
  const cpu::MaxArgs args{act.scalar_type(), act.const_data_ptr(), grad.const_data_ptr(), B, T, N,
                          act.stride(0), act.stride(1), grad.stride(0), grad.stride(1), index, is0, count,
                          out.mutable_data_ptr()};
  cpu::variant(cpu::current_level())(args);
}

at::Tensor max_attribution_cpu(const at::Tensor& act_in, const at::Tensor& grad_in, const at::Tensor& token_mask,
                               const std::optional<at::Tensor>& token_index,
                               const std::optional<at::Tensor>& token_count) {
  const TokenList tokens{token_index, token_count};
  check_attribution_inputs("culnig.max_attribution", act_in, grad_in, token_mask, tokens);
  const at::Tensor act = unit_stride_last_dim(act_in);
  const at::Tensor grad = unit_stride_last_dim(grad_in);
  const auto out_dtype = act.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::empty({act.size(0), act.size(2)}, act.options().dtype(out_dtype));
  compute_maxima(act, grad, token_mask, tokens, out);
  return out;
}

void max_attribution_accumulate_cpu(at::Tensor& acc, const at::Tensor& act_in, const at::Tensor& grad_in,
                                    const at::Tensor& token_mask, const at::Tensor& weight_in,
                                    const at::Tensor& group_in, std::optional<double> clamp_min,
                                    const std::optional<at::Tensor>& token_index,
                                    const std::optional<at::Tensor>& token_count) {
  const TokenList tokens{token_index, token_count};
  check_accumulate_inputs(acc, act_in, grad_in, token_mask, weight_in, group_in, tokens);
  const at::Tensor act = unit_stride_last_dim(act_in);
  const at::Tensor grad = unit_stride_last_dim(grad_in);
  const at::Tensor weight = weight_in.contiguous();
  const at::Tensor group = group_in.contiguous();
  const int64_t B = act.size(0), N = act.size(2);
  if (B == 0 || N == 0) return;
  const bool has_clamp = clamp_min.has_value();
  const double clamp = has_clamp ? *clamp_min : 0.0;
  const auto max_dtype = act.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // Pass 1: per-sample maxima [B, N].
  at::Tensor maxima = at::empty({B, N}, act.options().dtype(max_dtype));
  compute_maxima(act, grad, token_mask, tokens, maxima);
  // Pass 2: parallel over neuron ranges, samples in order inside (see the race note at the top).
  AT_DISPATCH_FLOATING_TYPES(max_dtype, "culnig_accumulate_cpu", [&] {
    const scalar_t* mx = maxima.const_data_ptr<scalar_t>();
    const float* w = weight.const_data_ptr<float>();
    const int64_t* grp = group.const_data_ptr<int64_t>();
    double* out = acc.mutable_data_ptr<double>();
    const int64_t os0 = acc.stride(0), os1 = acc.stride(1);
    at::parallel_for(0, N, 2048, [&](int64_t n_begin, int64_t n_end) {
      for (int64_t b = 0; b < B; ++b) {
        double* row = out + grp[b] * os0;
        const scalar_t* mb = mx + b * N;
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
