// Every header the CPU kernel body (attribution_cpu_kernel.inc) needs, included by each capability's
// translation unit BEFORE it switches the target instruction set, so that the functions of these headers
// are compiled for the baseline only (inline functions compiled for AVX-512 could otherwise be picked by
// the linker for all variants).
#pragma once

// Only the headers the kernel needs (not ATen/ATen.h): this file is compiled three times.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <numeric>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "../attribution.h"
#include "attribution_cpu.h"

// GCC (and compilers that speak its dialect but are not clang) can compile a region for another target.
#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && !defined(__clang__)
#define CULNIG_CAN_TARGET_X86 1
#else
#define CULNIG_CAN_TARGET_X86 0
#endif
