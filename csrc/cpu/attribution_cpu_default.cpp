// The CPU kernel for the baseline instruction set (scalar loop; what the compiler's flags allow).
#include "attribution_cpu_common.h"

#define CULNIG_CPU_NS cap_default
#define CULNIG_CPU_ENTRY maxima_default
#define CULNIG_CPU_LEVEL 0
#include "attribution_cpu_kernel.inc"

culnig::cpu::MaxFn culnig::cpu::maxima_default_fn() { return &cap_default::maxima_default; }
