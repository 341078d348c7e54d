"""The CUDA kernel's grid (csrc/launch_plan.h, exposed as torch.ops.culnig.launch_plan on every build): checked on
the CPU against plans computed by hand from the rules written in that header:

  tier 1 (as before): 128 threads, blocks_x = ceil(N / (128 vec)), blocks_y = min(B, 65535),
      splits = clamp(ceil(2 * sms * 16 / (blocks_x * blocks_y)), 1, min(T // 64, 64));
  tier 2, only while the grid has < 2 * sms blocks: 64 then 32 threads (only if that adds blocks along N,
      tier-1 splits recomputed), then splits raised to min(ceil(2 * sms / (blocks_x * blocks_y)), T // 16, 64).

Each row below shows its arithmetic. [threads, blocks_x, blocks_y, splits]."""
from __future__ import annotations

import pytest
import torch

import culnig_ext.kernels.ops as ops

H200 = 132  # SMs

PLANS = [
    # gate site, bf16: 14 x 8 = 112 blocks; ceil(4224 / 112) = 38 > 512 // 64 = 8 -> 896 blocks >= 264 (tier 1 only)
    ((8, 512, 14336, 8, H200), [128, 14, 8, 8]),
    # q site: 4 x 8 x 8 = 256 < 264 -> 64 threads: 8 x 8 x min(66, 8) = 512 >= 264
    ((8, 512, 4096, 8, H200), [64, 8, 8, 8]),
    # k/v site: 1 x 8 x 8 = 64 -> 64 thr: 2 x 8 x 8 = 128 -> 32 thr: 4 x 8 x 8 = 256 < 264 -> splits ceil(264/32) = 9
    ((8, 512, 1024, 8, H200), [32, 4, 8, 9]),
    # N = 1, T = 1: nothing to split or narrow (ceil(1 / 64) = 1 adds no block; T // 16 = 0)
    ((1, 1, 1, 1, H200), [128, 1, 1, 1]),
    # T = 1: narrowed to 32 threads (4 blocks along N), never split (T // 64 = T // 16 = 0)
    ((4, 1, 1024, 8, H200), [32, 4, 4, 1]),
    # huge T, B = 1: 64 splits at each width (cap), 4 x 1 x 64 = 256 < 264 -> min(66, 65536, 64) = 64
    ((1, 1 << 20, 1024, 8, H200), [32, 4, 1, 64]),
    # N not a multiple of the vector width, scalar kernel (vec 1): 8 x 4 x 4 = 128 -> 16 x 4 x 4 = 256
    # -> ceil(1000 / 32) = 32: 32 x 4 x min(33, 4) = 512
    ((4, 300, 1000, 1, H200), [32, 32, 4, 4]),
    # N = 1030 with 16-byte vectors (ragged last run): bx 2 -> 3 -> 5 (ceil(1030 / 256)), 10 blocks;
    # splits min(ceil(264 / 10) = 27, 64 // 16 = 4, 64) = 4
    ((2, 64, 1030, 8, H200), [32, 5, 2, 4]),
    # huge B: the grid's y limit (65535, a grid-stride loop covers the rest), no split
    ((100000, 128, 14336, 8, H200), [128, 14, 65535, 1]),
    # A100 (108 SMs), fp32 gate: 28 x 4 = 112 blocks; ceil(3456 / 112) = 31 > 256 // 64 = 4 -> 448 >= 216
    ((4, 256, 14336, 4, 108), [128, 28, 4, 4]),
    # one SM: 1 block < 2 -> 64 threads: 2 blocks >= 2 (T // 64 = 1: no split)
    ((1, 64, 128, 1, 1), [64, 2, 1, 1]),
]


@pytest.fixture(scope="module")
def plan():
    assert ops.EXTENSION_LOADED, f"the C++ extension did not load: {ops.LOAD.detail}"
    return torch.ops.culnig.launch_plan


@pytest.mark.parametrize(("args", "want"), PLANS, ids=[f"B{a[0]}-T{a[1]}-N{a[2]}-vec{a[3]}-sm{a[4]}" for a, _ in PLANS])
def test_plan_matches_hand_computed_table(plan, args, want):
    assert plan(*args) == want


@pytest.mark.parametrize("vec", [8, 4], ids=["bf16", "fp32"])
@pytest.mark.parametrize("N", [1024, 4096, 14336], ids=["k-v", "q", "gate"])
def test_the_sites_of_a_llama_batch_fill_two_waves(plan, N, vec):
    # Under the old rule (tier 1 alone) the k/v site had 1 x 8 x 8 = 64 blocks in bf16: half a wave on 132 SMs.
    _, bx, by, splits = plan(8, 512, N, vec, H200)
    assert bx * by * splits >= 2 * H200


@pytest.mark.parametrize("B", [1, 3, 8, 70000])
@pytest.mark.parametrize("T", [1, 15, 16, 63, 64, 700, 1 << 16])
@pytest.mark.parametrize("N", [1, 7, 255, 1024, 1030, 14336])
@pytest.mark.parametrize("vec", [1, 8])
def test_every_plan_covers_the_columns_and_respects_the_limits(plan, B, T, N, vec):
    threads, bx, by, splits = plan(B, T, N, vec, H200)
    assert threads in (32, 64, 128)
    assert (bx - 1) * threads * vec < N <= bx * threads * vec  # every neuron, and no empty block column
    assert by == min(B, 65535)
    assert 1 <= splits <= max(1, min(64, T // 16))


@pytest.mark.parametrize(("args", "pattern"), [
    ((0, 4, 4, 1, 1), "B must be >= 1, got 0"),
    ((1, 0, 4, 1, 1), "T must be >= 1, got 0"),
    ((1, 4, 0, 1, 1), "N must be >= 1, got 0"),
    ((1, 4, 4, 1, 0), "sms must be >= 1, got 0"),
    ((1, 4, 4, 3, 1), "vec must be 1, 2, 4 or 8, got 3"),
])
def test_bad_arguments_are_refused(plan, args, pattern):
    with pytest.raises(ValueError, match="culnig.launch_plan: " + pattern):
        plan(*args)
