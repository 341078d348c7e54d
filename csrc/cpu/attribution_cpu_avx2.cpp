// The CPU kernel for AVX2 + FMA + F16C (ATen's "avx2" capability), whatever the compiler flags say.
#include "attribution_cpu_common.h"

#if CULNIG_CAN_TARGET_X86
#pragma GCC push_options
#pragma GCC target("avx,avx2,fma,f16c")
#define CULNIG_CPU_NS cap_avx2
#define CULNIG_CPU_ENTRY maxima_avx2
#define CULNIG_CPU_LEVEL 1
#include "attribution_cpu_kernel.inc"
#pragma GCC pop_options

culnig::cpu::MaxFn culnig::cpu::maxima_avx2_fn() { return &cap_avx2::maxima_avx2; }
#else
culnig::cpu::MaxFn culnig::cpu::maxima_avx2_fn() { return nullptr; }
#endif
