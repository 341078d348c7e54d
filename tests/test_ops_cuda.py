"""CUDA tests of the fused attribution ops: the same checks as tests/test_ops.py, on the GPU, against an
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
    import culnig_ext.ops as ops
    import culnig_ext.ops_reference as ops_reference

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


def test_public_wrappers_use_the_cuda_kernels():
    assert ops.backend(DEV) == "cuda-ext"
    act, grad, mask = _inputs(3, 7, 40, torch.bfloat16, seed=6)
    torch.testing.assert_close(ops.max_attribution(act, grad, mask).cpu().double(), _oracle_max(act, grad, mask), rtol=0, atol=0)
