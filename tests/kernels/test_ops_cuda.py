"""CUDA tests of the fused attribution ops: the same checks as tests/kernels/test_ops.py, on the GPU, against an
independent float64 oracle computed on the CPU. Skipped (with the reason) when no GPU is available.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"),
]

if torch.cuda.is_available():  # import (and maybe build) the extension only where it can be tested
    import culnig_ext.kernels.ops as ops
    import culnig_ext.kernels.reference as ops_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
DEV = "cuda"


def _oracle_max(act: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, N] x2, [B, T] bool (any device) -> [B, N] float64 on the CPU, per-sample loop."""
    act, grad, mask = act.cpu(), grad.cpu(), mask.cpu()
    out = torch.empty(act.shape[0], act.shape[2], dtype=torch.float64)
    for b in range(act.shape[0]):
        rows = mask[b].nonzero().flatten()
        out[b] = (act[b, rows].double() * grad[b, rows].double()).max(0).values
    return out


def _oracle_acc(acc, act, grad, mask, weight, group, clamp_min):
    expected = acc.cpu().clone()
    m = _oracle_max(act, grad, mask)
    for b in range(act.shape[0]):
        v = m[b] if clamp_min is None else torch.clamp(m[b], min=clamp_min)
        expected[int(group[b])] += float(weight[b]) * v
    return expected


def _tolerance(dtype):
    if dtype in (torch.bfloat16, torch.float16):
        return {"rtol": 0.0, "atol": 0.0}  # products of bf16/fp16 values are exact in float32
    return {"rtol": 1e-6, "atol": 0.0} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 0.0}


def _inputs(B, T, N, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    act = torch.randn(B, T, N, generator=gen).to(dtype)
    grad = torch.randn(B, T, N, generator=gen).to(dtype)
    mask = torch.rand(B, T, generator=gen) < 0.6
    mask[torch.arange(B), torch.randint(0, T, (B,), generator=gen)] = True
    return act.to(DEV), grad.to(DEV), mask.to(DEV)


@pytest.fixture(params=["ext", "reference"])
def impl(request):
    if request.param == "ext":
        assert ops.backend(DEV) == "cuda-ext", f"CUDA kernels not loaded: {ops.LOAD}"
        return torch.ops.culnig.max_attribution, torch.ops.culnig.max_attribution_accumulate_
    return ops_reference.max_attribution, ops_reference.max_attribution_accumulate_


SHAPES = [(1, 1, 1), (2, 1, 7), (3, 5, 1), (4, 9, 67), (2, 3, 300), (3, 17, 520), (2, 700, 33)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_max_attribution_matches_oracle(impl, dtype, shape):
    max_fn, _ = impl
    act, grad, mask = _inputs(*shape, dtype)
    out = max_fn(act, grad, mask)
    assert out.device.type == "cuda" and out.shape == (shape[0], shape[2])
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(out.cpu().double(), _oracle_max(act, grad, mask), **_tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("clamp_min", [None, 0.0, 0.3], ids=lambda c: f"clamp={c}")
def test_accumulate_matches_oracle_with_repeated_groups(impl, dtype, clamp_min):
    _, acc_fn = impl
    act, grad, mask = _inputs(6, 11, 290, dtype, seed=1)
    weight = (torch.rand(6) + 0.1).to(DEV)
    group = torch.tensor([2, 0, 2, 3, 2, 0], device=DEV)
    acc = torch.randn(4, 290, dtype=torch.float64, device=DEV)
    expected = _oracle_acc(acc, act, grad, mask, weight, group, clamp_min)
    acc_fn(acc, act, grad, mask, weight, group, clamp_min)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(acc.cpu(), expected, **tol)


def test_many_samples_beyond_one_grid_row():
    # B > 65535 exercises the grid-stride loop over samples.
    act, grad, mask = _inputs(70_000, 2, 3, torch.float32, seed=2)
    out = torch.ops.culnig.max_attribution(act, grad, mask)
    torch.testing.assert_close(out.cpu().double(), _oracle_max(act, grad, mask), rtol=1e-6, atol=0.0)


def test_accumulate_is_deterministic_and_matches_cpu_kernel():
    act, grad, mask = _inputs(32, 40, 1000, torch.bfloat16, seed=3)
    weight = torch.rand(32, device=DEV)
    group = torch.randint(0, 3, (32,), device=DEV)
    results = []
    for _ in range(2):
        acc = torch.zeros(3, 1000, dtype=torch.float64, device=DEV)
        torch.ops.culnig.max_attribution_accumulate_(acc, act, grad, mask, weight, group, 0.0)
        results.append(acc.cpu())
    assert torch.equal(results[0], results[1])
    acc_cpu = torch.zeros(3, 1000, dtype=torch.float64)
    torch.ops.culnig.max_attribution_accumulate_(acc_cpu, act.cpu(), grad.cpu(), mask.cpu(), weight.cpu(), group.cpu(), 0.0)
    torch.testing.assert_close(results[0], acc_cpu, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_column_slices(impl, dtype):
    max_fn, acc_fn = impl
    gen = torch.Generator().manual_seed(4)
    B, T, N = 3, 6, 70
    wide_act = torch.randn(2 * B, T, 3 * N + 5, generator=gen).to(dtype).to(DEV)
    wide_grad = torch.randn(2 * B, T, 2 * N, generator=gen).to(dtype).to(DEV)
    act, grad = wide_act[::2, :, N + 5 : 2 * N + 5], wide_grad[::2, :, N:]
    mask = torch.ones(B, T, dtype=torch.bool, device=DEV)
    mask[0, :2] = False
    torch.testing.assert_close(max_fn(act, grad, mask).cpu().double(), _oracle_max(act, grad, mask), **_tolerance(dtype))
    acc = torch.zeros(2, N, dtype=torch.float64, device=DEV)
    weight, group = torch.tensor([1.0, 0.5, 2.0], device=DEV), torch.tensor([1, 0, 1], device=DEV)
    expected = _oracle_acc(acc, act, grad, mask, weight, group, None)
    acc_fn(acc, act, grad, mask, weight, group)
    torch.testing.assert_close(acc.cpu(), expected, rtol=1e-6, atol=1e-6)


def _valid():
    act, grad, mask = _inputs(4, 5, 12, torch.float32, seed=5)
    return {"acc": torch.randn(3, 12, dtype=torch.float64, device=DEV), "act": act, "grad": grad,
            "token_mask": mask, "weight": torch.rand(4, device=DEV), "group": torch.tensor([0, 2, 2, 1], device=DEV)}


def _no_token_in_sample_2(a):
    a["token_mask"][2] = False


ERRORS = [
    ("grad dtype", lambda a: a.update(grad=a["grad"].double()), TypeError, r"grad dtype must equal act dtype float32, got float64"),
    ("mask shape", lambda a: a.update(token_mask=a["token_mask"][:, :3]), ValueError, r"token_mask must have shape \[B, T\] = \[4, 5\], got \[4, 3\]"),
    ("empty sample", _no_token_in_sample_2, ValueError, r"token_mask\[2\] has no true token: sample 2"),
    ("acc dtype", lambda a: a.update(acc=a["acc"].float()), TypeError, r"acc must be float64, got float32"),
    ("weight dtype", lambda a: a.update(weight=a["weight"].double()), TypeError, r"weight must be float32, got float64"),
    ("group too big", lambda a: a["group"].__setitem__(3, 3), IndexError, r"group\[3\] = 3 is out of range for acc with 3 rows"),
    ("acc on cpu", lambda a: a.update(acc=a["acc"].cpu()), ValueError, r"acc must be on act's device cuda:0, got cpu"),
    ("grad on cpu", lambda a: a.update(grad=a["grad"].cpu()), ValueError, r"grad must be on act's device cuda:0, got cpu"),
    ("mask on cpu", lambda a: a.update(token_mask=a["token_mask"].cpu()), ValueError, r"token_mask must be on act's device cuda:0, got cpu"),
    ("group on cpu", lambda a: a.update(group=a["group"].cpu()), ValueError, r"group must be on act's device cuda:0, got cpu"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[e[0] for e in ERRORS])
def test_accumulate_refuses_bad_input_and_leaves_acc_untouched(impl, case):
    _, acc_fn = impl
    _, mutate, exc_type, pattern = case
    args = _valid()
    mutate(args)
    before = args["acc"].clone()
    with pytest.raises(exc_type, match="culnig.max_attribution_accumulate_: " + pattern):
        acc_fn(args["acc"], args["act"], args["grad"], args["token_mask"], args["weight"], args["group"], 0.0)
    assert torch.equal(args["acc"], before)


# ----------------------------------------------------------------------------------------------------
# The token list (built once per batch, no host sync), the vector/scalar paths and the split-T grid.
# ----------------------------------------------------------------------------------------------------
def _token_list(mask):
    """An independent token list: positions of True, ascending, zero-padded; counts."""
    B, T = mask.shape
    index = torch.zeros(B, T, dtype=torch.int32)
    count = torch.zeros(B, dtype=torch.int32)
    for b in range(B):
        rows = mask[b].cpu().nonzero().flatten()
        index[b, : len(rows)] = rows.to(torch.int32)
        count[b] = len(rows)
    return index.to(mask.device), count.to(mask.device)


def test_token_list_matches_hand_built():
    _, _, mask = _inputs(5, 33, 1, torch.float32, seed=10)
    index, count = ops.token_list(mask)
    want_index, want_count = _token_list(mask)
    assert index.device.type == "cuda" and index.dtype == torch.int32
    assert torch.equal(count.cpu(), want_count.cpu()) and torch.equal(index.cpu(), want_index.cpu())


# (B, T, N): vector tail (N not a multiple of 8/4/2), many tokens per split, one sample with a long T (split grid),
# wide N with few samples, B*N large enough that no split is taken.
LIST_SHAPES = [(1, 1, 1), (3, 5, 13), (2, 300, 1027), (1, 4100, 67), (4, 700, 2051), (64, 9, 4099)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", LIST_SHAPES, ids=str)
def test_with_token_list_matches_oracle(impl, dtype, shape):
    max_fn, acc_fn = impl
    act, grad, mask = _inputs(*shape, dtype, seed=11)
    index, count = _token_list(mask)
    out = max_fn(act, grad, mask, index, count)
    torch.testing.assert_close(out.cpu().double(), _oracle_max(act, grad, mask), **_tolerance(dtype))
    B, N = shape[0], shape[2]
    weight = (torch.rand(B) + 0.1).to(DEV)
    group = (torch.arange(B) % 3).to(DEV)
    acc = torch.randn(3, N, dtype=torch.float64, device=DEV)
    expected = _oracle_acc(acc, act, grad, mask, weight, group, 0.0)
    acc_fn(acc, act, grad, mask, weight, group, 0.0, index, count)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(acc.cpu(), expected, **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("offset", [0, 1, 3, 8], ids=lambda o: f"offset={o}")
def test_odd_column_offsets_scalar_fallback(impl, dtype, offset):
    """Column slices starting at any offset (fused q/k/v): unaligned ones take the scalar path, aligned the vector
    one; both match the oracle, with and without the token list."""
    max_fn, acc_fn = impl
    gen = torch.Generator().manual_seed(12)
    B, T, N = 3, 40, 77
    wide_act = torch.randn(B, T, N + 11, generator=gen).to(dtype).to(DEV)
    wide_grad = torch.randn(B, T, N + 11, generator=gen).to(dtype).to(DEV)
    act, grad = wide_act[:, :, offset : offset + N], wide_grad[:, :, offset : offset + N]
    mask = (torch.rand(B, T, generator=gen) < 0.5).to(DEV)
    mask[:, 7] = True
    index, count = _token_list(mask)
    for extra in ((), (index, count)):
        torch.testing.assert_close(max_fn(act, grad, mask, *extra).cpu().double(), _oracle_max(act, grad, mask),
                                   **_tolerance(dtype))
        acc = torch.zeros(2, N, dtype=torch.float64, device=DEV)
        weight, group = torch.tensor([1.0, 0.5, 2.0], device=DEV), torch.tensor([1, 0, 1], device=DEV)
        expected = _oracle_acc(acc, act, grad, mask, weight, group, None)
        acc_fn(acc, act, grad, mask, weight, group, None, *extra)
        torch.testing.assert_close(acc.cpu(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_all_masked_but_one_and_nan(impl, dtype):
    max_fn, _ = impl
    gen = torch.Generator().manual_seed(13)
    B, T, N = 4, 3000, 300  # long T: the split grid, with the one counted token in different splits
    act = torch.randn(B, T, N, generator=gen).to(dtype)
    grad = torch.randn(B, T, N, generator=gen).to(dtype)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, t in enumerate((0, 1500, T - 1, 777)):
        mask[b, t] = True
    mask[3, 2000:2010] = True
    act[1, 1500, 5] = float("nan")    # the only counted token of sample 1
    act[3, 2005, 290] = float("nan")  # a counted token in the vector part
    act[0, 9, 7] = float("nan")       # masked: no effect
    act, grad, mask = act.to(DEV), grad.to(DEV), mask.to(DEV)
    index, count = _token_list(mask)
    for extra in ((), (index, count)):
        out = max_fn(act, grad, mask, *extra).cpu().double()
        assert {tuple(i) for i in torch.isnan(out).nonzero().tolist()} == {(1, 5), (3, 290)}
        expected = _oracle_max(act, grad, mask)
        keep = ~torch.isnan(expected)
        torch.testing.assert_close(out[keep], expected[keep], **_tolerance(dtype))


def test_split_grid_is_deterministic_and_equals_cpu_bits():
    """The split-T grid combines partials in token order: bit-identical to the CPU kernel, run after run."""
    act, grad, mask = _inputs(2, 6000, 520, torch.bfloat16, seed=14)
    index, count = _token_list(mask)
    runs = [torch.ops.culnig.max_attribution(act, grad, mask, index, count).cpu() for _ in range(3)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    cpu = torch.ops.culnig.max_attribution(act.cpu(), grad.cpu(), mask.cpu())
    assert torch.equal(runs[0], cpu)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", [(8, 512, 1024), (8, 512, 4096), (1, 64, 1030), (3, 300, 1000)])
def test_small_n_plans_keep_the_cpu_bits(dtype, shape):
    """Grids of the fill tier (narrow blocks, more splits; csrc/launch_plan.h) give the CPU kernel's bits."""
    B, T, N = shape
    threads, _, _, splits = torch.ops.culnig.launch_plan(B, T, N, 16 // _elem_size(dtype), _sm_count())
    act, grad, mask = _inputs(B, T, N, dtype, seed=31)
    index, count = _token_list(mask)
    got = torch.ops.culnig.max_attribution(act, grad, mask, index, count).cpu()
    assert torch.equal(got, torch.ops.culnig.max_attribution(act.cpu(), grad.cpu(), mask.cpu())), (threads, splits)


def _elem_size(dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _sm_count() -> int:
    return torch.cuda.get_device_properties(0).multi_processor_count


def test_parallel_combine_adds_each_group_in_sample_order():
    """Step 2 of the accumulating op adds a group's terms in sample order across its 32-sample chunks: with all
    maxima 1 and weights 2^53, 1, 1, -2^53 in that order the float64 sum is exactly 0 (2^53 + 1 rounds back to
    2^53); any other order or grouping gives 2 or -2."""
    B, T, N = 70, 3, 300
    act = torch.ones(B, T, N, dtype=torch.bfloat16, device=DEV)
    mask = torch.ones(B, T, dtype=torch.bool, device=DEV)
    big = float(2**53)
    group = torch.arange(B) % 5 + 2  # groups 2..6: small weights, sums computed below
    weight = torch.full((B,), 0.25)
    for g, rows in ((0, (30, 31, 32, 33)), (1, (5, 40, 64, 69))):  # across chunk boundaries (32, 64)
        group[list(rows)] = g
        weight[list(rows)] = torch.tensor([big, 1.0, 1.0, -big])
    acc = torch.zeros(7, N, dtype=torch.float64, device=DEV)
    torch.ops.culnig.max_attribution_accumulate_(acc, act, act, mask, weight.to(DEV), group.to(DEV), None)
    expected = torch.zeros(7, N, dtype=torch.float64)
    for b in range(B):  # sequential, sample order
        expected[int(group[b])] += float(weight[b])
    assert expected[0].abs().max() == 0 and expected[1].abs().max() == 0
    assert torch.equal(acc.cpu(), expected)


def test_ops_with_token_list_do_not_sync():
    """With the token list the ops read no device data on the host: they run under a sync-forbidding debug mode."""
    act, grad, mask = _inputs(4, 50, 300, torch.bfloat16, seed=15)
    index, count = ops.token_list(mask)  # may sync (it checks the mask once per batch)
    acc = torch.zeros(2, 300, dtype=torch.float64, device=DEV)
    weight, group = torch.rand(4, device=DEV), torch.tensor([0, 1, 1, 0], device=DEV)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.ops.culnig.max_attribution_accumulate_(acc, act, grad, mask, weight, group, 0.0, index, count)
        out = torch.ops.culnig.max_attribution(act, grad, mask, index, count)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out.cpu().double(), _oracle_max(act, grad, mask), rtol=0, atol=0)


@pytest.mark.parametrize("bad", ["index", "count", "group"])
def test_device_side_asserts_catch_bad_token_list_and_group(bad):
    """With the token list nothing is checked on the host for CUDA tensors; out-of-range values stop the kernel with a
    device-side assert (run in a subprocess: an assert leaves the CUDA context unusable)."""
    import subprocess
    import sys
    from pathlib import Path

    script = f"""
import torch, culnig_ext.kernels.ops as ops
act = torch.randn(2, 5, 64, device="cuda"); mask = torch.ones(2, 5, dtype=torch.bool, device="cuda")
index, count = ops.token_list(mask)
group = torch.tensor([0, 1], device="cuda")
if "{bad}" == "index": index[1, 2] = 7
if "{bad}" == "count": count[0] = 9
if "{bad}" == "group": group[1] = 5
acc = torch.zeros(2, 64, dtype=torch.float64, device="cuda")
ops.max_attribution_accumulate_(acc, act, act, mask, torch.ones(2, device="cuda"), group, None, index, count)
torch.cuda.synchronize()
print("NO ASSERT")
"""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert proc.returncode != 0 and "NO ASSERT" not in proc.stdout, proc.stdout + proc.stderr
    assert "device-side assert" in proc.stderr or "culnig:" in proc.stderr, proc.stderr[-2000:]


def test_one_scorer_batch_captured_in_a_cuda_graph():
    """A scorer batch's op calls (several sites sharing one token list, weight and group on the device) are captured
    in a CUDA graph and replayed: the replay adds the same as eager calls, and a second replay adds it again."""
    sites = [(_inputs(6, 70, n, dt, seed=20 + i)[:2]) for i, (n, dt) in
             enumerate([(256, torch.bfloat16), (77, torch.bfloat16), (1024, torch.float16), (96, torch.float32)])]
    _, _, mask = _inputs(6, 70, 1, torch.float32, seed=19)
    index, count = ops.token_list(mask)
    weight, group = torch.rand(6, device=DEV), torch.tensor([0, 1, 2, 0, 1, 2], device=DEV)
    accs = [torch.zeros(3, a.shape[2], dtype=torch.float64, device=DEV) for a, _ in sites]

    def batch():
        for acc, (act, grad) in zip(accs, sites):
            ops.max_attribution_accumulate_(acc, act, grad, mask, weight, group, 0.0, index, count)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        batch()  # warm-up outside the capture (allocator, first launches)
    torch.cuda.current_stream().wait_stream(stream)
    for acc in accs:
        acc.zero_()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        batch()
    for acc in accs:
        acc.zero_()
    graph.replay()
    graph.replay()
    torch.cuda.synchronize()
    for acc, (act, grad) in zip(accs, sites):
        once = _oracle_acc(torch.zeros_like(acc).cpu(), act, grad, mask, weight, group, 0.0)
        tol = {"rtol": 1e-6, "atol": 1e-6} if act.dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
        torch.testing.assert_close(acc.cpu(), 2 * once, **tol)


def test_scorer_on_cuda_matches_cpu():
    """culnig_ext.score on the GPU (token list per batch, fused CUDA op) equals the CPU table."""
    from tests.fixtures import random_items, tiny_model

    import culnig_ext

    model = tiny_model("llama")
    items = random_items(9, seed=21, multi_token=True)
    cpu = culnig_ext.score(model, items, batch_size=4, progress=False)
    gpu = culnig_ext.score(model.to(DEV), items, batch_size=4, progress=False)
    gpu_ckpt = culnig_ext.score(model, items, batch_size=4, progress=False, checkpoint_activations=True)
    for name in cpu.sites:
        torch.testing.assert_close(gpu[name], cpu[name], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(gpu_ckpt[name], cpu[name], rtol=1e-9, atol=1e-12)


def test_public_wrappers_use_the_cuda_kernels():
    assert ops.backend(DEV) == "cuda-ext"
    act, grad, mask = _inputs(3, 7, 40, torch.bfloat16, seed=6)
    torch.testing.assert_close(ops.max_attribution(act, grad, mask).cpu().double(), _oracle_max(act, grad, mask), rtol=0, atol=0)
