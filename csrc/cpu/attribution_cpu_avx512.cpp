// The CPU kernel for AVX-512 F/BW/VL/DQ (ATen's "avx512" capability), whatever the compiler flags say.
#include "attribution_cpu_common.h"

#if CULNIG_CAN_TARGET_X86
#pragma GCC push_options
#pragma GCC target("avx,avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
#define CULNIG_CPU_NS cap_avx512
#define CULNIG_CPU_ENTRY maxima_avx512
#define CULNIG_CPU_LEVEL 2
#include "attribution_cpu_kernel.inc"
#pragma GCC pop_options

culnig::cpu::MaxFn culnig::cpu::maxima_avx512_fn() { return &cap_avx512::maxima_avx512; }
#else
culnig::cpu::MaxFn culnig::cpu::maxima_avx512_fn() { return nullptr; }
#endif
