// The CPU kernel's variants (one per CPU capability) and the choice between them.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <vector>

namespace culnig {
namespace cpu {

// Pass 1 of both ops: out[b, n] = running max over sample b's counted tokens of act[b, t, n] * grad[b, t, n].
struct MaxArgs {
  c10::ScalarType dtype;     // of act and grad
  const void* act;           // [B, T, N], strides (as0, as1, 1)
  const void* grad;          // [B, T, N], strides (gs0, gs1, 1)
  int64_t B, T, N, as0, as1, gs0, gs1;
  const int32_t* index;      // token list: row b (stride is0) holds count[b] ascending token positions
  int64_t is0;
  const int32_t* count;      // [B], each in [1, T] (checked by the caller)
  void* out;                 // [B, N] contiguous, at::opmath_type of dtype
};

// One per capability, each compiled for its instruction set (attribution_cpu_{default,avx2,avx512}.cpp).
// The avx2/avx512 ones are null where the compiler cannot target them (non-x86, non-GCC-compatible).
using MaxFn = void (*)(const MaxArgs&);
MaxFn maxima_default_fn();
MaxFn maxima_avx2_fn();
MaxFn maxima_avx512_fn();

// The variant in use: "default", "avx2" or "avx512". At load: CULNIG_CPU_CAPABILITY if set (refused with a
// clear error if this CPU or build cannot run it), else the best that this CPU, this build and ATen's own CPU
// capability (ATEN_CPU_CAPABILITY) allow.
std::string capability();
// The variants this CPU and build can run, lowest first.
std::vector<std::string> capabilities();
void set_capability(const std::string& name);

}  // namespace cpu
}  // namespace culnig
