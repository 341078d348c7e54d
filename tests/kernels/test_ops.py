"""Tests of the fused attribution ops (CPU), for both the C++ extension and the pure-PyTorch reference.

Every result is compared with an independent float64 oracle written here (_oracle_max/_oracle_acc), never
with the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

import culnig_ext.kernels.ops as ops
import culnig_ext.kernels.reference as ops_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


# ----------------------------------------------------------------------------------------------------
# Independent oracle: float64, explicit loops over samples (vectorised over tokens and neurons).
# ----------------------------------------------------------------------------------------------------
def _oracle_max(act: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, N] x2, [B, T] bool -> [B, N] float64: max over masked tokens of the exact product of the
    given (possibly bf16/fp16) values upcast to float64."""
    B, T, N = act.shape
    out = torch.empty(B, N, dtype=torch.float64)
    for b in range(B):
        rows = mask[b].nonzero().flatten().tolist()
        products = [act[b, t].double() * grad[b, t].double() for t in rows]
        out[b] = torch.stack(products).max(0).values
    return out


def _oracle_acc(acc, act, grad, mask, weight, group, clamp_min):
    """The expected acc after accumulation, float64 [G, N]."""
    expected = acc.clone()
    m = _oracle_max(act, grad, mask)
    for b in range(act.shape[0]):
        v = m[b] if clamp_min is None else torch.clamp(m[b], min=clamp_min)
        expected[int(group[b])] += float(weight[b]) * v
    return expected


def _tolerance(dtype: torch.dtype) -> dict:
    # Products of two bf16/fp16 values are exact in float32 (8+8 resp. 11+11 significant bits <= 24), so
    # the op must match the float64 oracle exactly: any rounding to the input dtype would show.
    if dtype in (torch.bfloat16, torch.float16):
        return {"rtol": 0.0, "atol": 0.0}
    if dtype == torch.float32:
        return {"rtol": 1e-6, "atol": 0.0}
    return {"rtol": 1e-12, "atol": 0.0}


def _random_mask(B: int, T: int, gen: torch.Generator, p_true: float = 0.6) -> torch.Tensor:
    mask = torch.rand(B, T, generator=gen) < p_true
    mask[torch.arange(B), torch.randint(0, T, (B,), generator=gen)] = True  # at least one token each
    return mask


def _inputs(B: int, T: int, N: int, dtype: torch.dtype, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    act = torch.randn(B, T, N, generator=gen).to(dtype)
    grad = torch.randn(B, T, N, generator=gen).to(dtype)
    return act, grad, _random_mask(B, T, gen)


# ----------------------------------------------------------------------------------------------------
# Backends: the extension's torch.ops.culnig.* and the reference, explicitly.
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(params=["ext", "reference"])
def impl(request):
    if request.param == "ext":
        assert ops.EXTENSION_LOADED, f"the C++ extension did not load: {ops.LOAD.detail}"
        return torch.ops.culnig.max_attribution, torch.ops.culnig.max_attribution_accumulate_
    return ops_reference.max_attribution, ops_reference.max_attribution_accumulate_


SHAPES = [
    (1, 1, 1),
    (2, 1, 7),  # T = 1
    (3, 5, 1),  # N = 1
    (4, 9, 67),  # N not a multiple of any vector width
    (2, 3, 4100),  # spans three CPU neuron blocks (2048), ragged last block
    (3, 17, 520),
    (2, 700, 33),  # large T
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_max_attribution_matches_oracle(impl, dtype, shape):
    max_fn, _ = impl
    act, grad, mask = _inputs(*shape, dtype)
    out = max_fn(act, grad, mask)
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.shape == (shape[0], shape[2])
    torch.testing.assert_close(out.double(), _oracle_max(act, grad, mask), **_tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("clamp_min", [None, 0.0, 0.3], ids=lambda c: f"clamp={c}")
def test_accumulate_matches_oracle_with_repeated_groups(impl, dtype, clamp_min):
    _, acc_fn = impl
    B, T, N, G = 6, 11, 290, 4
    act, grad, mask = _inputs(B, T, N, dtype, seed=1)
    gen = torch.Generator().manual_seed(2)
    weight = torch.rand(B, generator=gen) + 0.1
    group = torch.tensor([2, 0, 2, 3, 2, 0])  # group 2 three times, group 1 never
    acc = torch.randn(G, N, generator=gen, dtype=torch.float64)
    expected = _oracle_acc(acc, act, grad, mask, weight, group, clamp_min)
    acc_fn(acc, act, grad, mask, weight, group, clamp_min)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(acc, expected, **tol)
    if clamp_min is not None:
        # The clamp really acted: without it some maxima are below clamp_min.
        assert (_oracle_max(act, grad, mask) < clamp_min).any()


def test_accumulate_twice_adds_twice(impl):
    _, acc_fn = impl
    act, grad, mask = _inputs(3, 4, 10, torch.float64, seed=3)
    weight = torch.tensor([1.0, 2.0, 0.5])
    group = torch.tensor([0, 0, 1])
    acc = torch.zeros(2, 10, dtype=torch.float64)
    acc_fn(acc, act, grad, mask, weight, group)
    acc_fn(acc, act, grad, mask, weight, group)
    once = _oracle_acc(torch.zeros(2, 10, dtype=torch.float64), act, grad, mask, weight, group, None)
    torch.testing.assert_close(acc, 2 * once, rtol=1e-12, atol=1e-12)


def test_accumulate_into_a_strided_view_of_acc(impl):
    _, acc_fn = impl
    act, grad, mask = _inputs(3, 4, 9, torch.float64, seed=8)
    weight, group = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([2, 0, 2])
    storage = torch.randn(3, 18, dtype=torch.float64)
    acc = storage[:, ::2]  # column stride 2
    untouched = storage[:, 1::2].clone()
    expected = _oracle_acc(acc, act, grad, mask, weight, group, None)
    acc_fn(acc, act, grad, mask, weight, group)
    torch.testing.assert_close(acc, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(storage[:, 1::2], untouched)


def test_hand_computed_values(impl):
    max_fn, acc_fn = impl
    # b=0: tokens 0 and 2 count: products [2*3, -1*1] and [0.5*4, 5*-2]  -> max [6, -1]
    # b=1: token 1 counts only: product [-1*-1, 2*2] = [1, 4]
    act = torch.tensor([[[2.0, -1.0], [100.0, 100.0], [0.5, 5.0]], [[9.0, 9.0], [-1.0, 2.0], [9.0, 9.0]]])
    grad = torch.tensor([[[3.0, 1.0], [1.0, 1.0], [4.0, -2.0]], [[1.0, 1.0], [-1.0, 2.0], [1.0, 1.0]]])
    mask = torch.tensor([[True, False, True], [False, True, False]])
    assert max_fn(act, grad, mask).tolist() == [[6.0, -1.0], [1.0, 4.0]]
    acc = torch.zeros(1, 2, dtype=torch.float64)
    acc_fn(acc, act, grad, mask, torch.tensor([0.5, 2.0]), torch.tensor([0, 0]), 0.0)
    assert acc.tolist() == [[0.5 * 6 + 2 * 1, 0.5 * 0 + 2 * 4]]


def test_nan_in_a_counted_token_propagates_masked_one_does_not(impl):
    max_fn, _ = impl
    act = torch.ones(1, 3, 4)
    grad = torch.ones(1, 3, 4)
    act[0, 1, 1] = float("nan")  # counted token
    act[0, 2, 2] = float("nan")  # masked token
    mask = torch.tensor([[True, True, False]])
    out = max_fn(act, grad, mask)
    assert math.isnan(out[0, 1]) and out[0, [0, 2, 3]].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_inside_the_vectorised_part_propagates(impl, dtype):
    """NaN (and 0 * inf) at neuron indices past the first vector widths, in counted tokens of several samples,
    must come out NaN like torch.amax; NaN in masked tokens must not; every other neuron matches the oracle."""
    max_fn, _ = impl
    g = torch.Generator().manual_seed(5)
    act = torch.randn(3, 9, 300, generator=g).to(dtype)
    grad = torch.randn(3, 9, 300, generator=g).to(dtype)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, :3] = False
    act[0, 5, 37] = float("nan")     # counted
    act[1, 8, 130] = float("nan")    # counted, last token
    act[2, 0, 257] = 0.0             # 0 * inf = NaN, counted
    grad[2, 0, 257] = float("inf")
    act[0, 1, 64] = float("nan")     # masked token: no effect
    out = max_fn(act, grad, mask).double()
    nan_at = {(0, 37), (1, 130), (2, 257)}
    assert {tuple(i) for i in torch.isnan(out).nonzero().tolist()} == nan_at
    expected = _oracle_max(act, grad, mask)
    keep = ~torch.isnan(expected)
    # bf16/fp16/fp64 products are exact in the op's accumulation type; a float32 product is rounded once.
    rtol = 1e-6 if dtype == torch.float32 else 0.0
    torch.testing.assert_close(out[keep], expected[keep], rtol=rtol, atol=0)


def test_empty_batch(impl):
    max_fn, acc_fn = impl
    act = torch.randn(0, 3, 5)
    assert max_fn(act, act, torch.zeros(0, 3, dtype=torch.bool)).shape == (0, 5)
    acc = torch.ones(2, 5, dtype=torch.float64)
    acc_fn(acc, act, act, torch.zeros(0, 3, dtype=torch.bool), torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert acc.tolist() == torch.ones(2, 5, dtype=torch.float64).tolist()


# ----------------------------------------------------------------------------------------------------
# Strided inputs: column slices of a fused projection, read in place.
# ----------------------------------------------------------------------------------------------------
def _strided_views(dtype: torch.dtype):
    """act, grad, mask where act/grad are column slices (last-dim stride 1, row stride > N) of wider
    tensors, with a non-standard batch stride too (every other sample of a larger batch)."""
    gen = torch.Generator().manual_seed(4)
    B, T, N = 3, 6, 70
    wide_act = torch.randn(2 * B, T, 3 * N + 5, generator=gen).to(dtype)  # like qkv_proj output
    wide_grad = torch.randn(2 * B, T, 2 * N, generator=gen).to(dtype)  # like gate_up_proj output
    act = wide_act[::2, :, N + 5 : 2 * N + 5]
    grad = wide_grad[::2, :, N:]
    assert act.stride(-1) == 1 and not act.is_contiguous() and not grad.is_contiguous()
    return act, grad, _random_mask(B, T, gen)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_column_slices(impl, dtype):
    max_fn, acc_fn = impl
    act, grad, mask = _strided_views(dtype)
    torch.testing.assert_close(max_fn(act, grad, mask).double(), _oracle_max(act, grad, mask), **_tolerance(dtype))
    acc = torch.zeros(2, act.shape[2], dtype=torch.float64)
    weight, group = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([1, 0, 1])
    expected = _oracle_acc(acc, act, grad, mask, weight, group, None)
    acc_fn(acc, act, grad, mask, weight, group)
    torch.testing.assert_close(acc, expected, rtol=1e-6, atol=1e-6)


def _copy_ops_during(fn) -> set[str]:
    """Names of the copying aten ops (clone / copy_ / contiguous) that run while fn() runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events()} & {"aten::clone", "aten::copy_", "aten::contiguous"}


def test_extension_reads_column_slices_without_copy():
    assert ops.EXTENSION_LOADED, ops.LOAD.detail
    act, grad, mask = _strided_views(torch.bfloat16)
    acc = torch.zeros(2, act.shape[2], dtype=torch.float64)
    weight, group = torch.tensor([1.0, 0.5, 2.0]), torch.tensor([1, 0, 1])
    assert _copy_ops_during(lambda: torch.ops.culnig.max_attribution(act, grad, mask)) == set()
    assert _copy_ops_during(
        lambda: torch.ops.culnig.max_attribution_accumulate_(acc, act, grad, mask, weight, group, None)
    ) == set()
    # The detector does see a copy: a tensor whose last dim is not unit-stride is copied (fallback) ...
    act_t = act.transpose(1, 2).contiguous().transpose(1, 2)
    assert act_t.stride(-1) != 1
    assert _copy_ops_during(lambda: torch.ops.culnig.max_attribution(act_t, grad, mask)) != set()
    # ... and still gives the right answer.
    torch.testing.assert_close(
        torch.ops.culnig.max_attribution(act_t, grad, mask).double(), _oracle_max(act, grad, mask), rtol=0, atol=0
    )


# ----------------------------------------------------------------------------------------------------
# Refusals: each names the argument, and acc is left untouched.
# ----------------------------------------------------------------------------------------------------
def _valid():
    act, grad, mask = _inputs(4, 5, 12, torch.float32, seed=5)
    return {
        "acc": torch.randn(3, 12, dtype=torch.float64),
        "act": act,
        "grad": grad,
        "token_mask": mask,
        "weight": torch.rand(4),
        "group": torch.tensor([0, 2, 2, 1]),
    }


def _no_token_in_sample_2(a):
    a["token_mask"][2] = False


ERRORS = [
    ("act 2-D", lambda a: a.update(act=a["act"][0]), ValueError, r"act must be a 3-D tensor \[B, T, N\], got shape \[5, 12\]"),
    ("act int", lambda a: a.update(act=a["act"].long()), TypeError, r"act dtype must be one of float32, bfloat16, float16, float64, got int64"),
    ("grad dtype", lambda a: a.update(grad=a["grad"].double()), TypeError, r"grad dtype must equal act dtype float32, got float64"),
    ("grad shape", lambda a: a.update(grad=a["grad"][:, :4]), ValueError, r"grad must have the same shape as act \[4, 5, 12\], got \[4, 4, 12\]"),
    ("mask dtype", lambda a: a.update(token_mask=a["token_mask"].to(torch.uint8)), TypeError, r"token_mask must be a bool tensor, got uint8"),
    ("mask shape", lambda a: a.update(token_mask=a["token_mask"][:, :3]), ValueError, r"token_mask must have shape \[B, T\] = \[4, 5\], got \[4, 3\]"),
    ("empty sample", _no_token_in_sample_2, ValueError, r"token_mask\[2\] has no true token: sample 2"),
    ("acc dtype", lambda a: a.update(acc=a["acc"].float()), TypeError, r"acc must be float64, got float32"),
    ("acc shape", lambda a: a.update(acc=a["acc"][:, :11]), ValueError, r"acc must be a 2-D tensor \[G, N\] with N = 12, got shape \[3, 11\]"),
    ("weight dtype", lambda a: a.update(weight=a["weight"].double()), TypeError, r"weight must be float32, got float64"),
    ("weight shape", lambda a: a.update(weight=a["weight"][:3]), ValueError, r"weight must have shape \[B\] = \[4\], got \[3\]"),
    ("group dtype", lambda a: a.update(group=a["group"].int()), TypeError, r"group must be int64, got int32"),
    ("group shape", lambda a: a.update(group=a["group"][None]), ValueError, r"group must have shape \[B\] = \[4\], got \[1, 4\]"),
    ("group too big", lambda a: a["group"].__setitem__(3, 3), IndexError, r"group\[3\] = 3 is out of range for acc with 3 rows"),
    ("group negative", lambda a: a["group"].__setitem__(1, -1), IndexError, r"group\[1\] = -1 is out of range for acc with 3 rows"),
    ("acc on meta", lambda a: a.update(acc=a["acc"].to("meta")), ValueError, r"acc must be on act's device cpu, got meta"),
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
    if before.device.type != "meta":
        assert torch.equal(args["acc"], before)


MAX_ERRORS = [e for e in ERRORS if e[0] in ("act 2-D", "act int", "grad dtype", "grad shape", "mask dtype", "mask shape", "empty sample")]


@pytest.mark.parametrize("case", MAX_ERRORS, ids=[e[0] for e in MAX_ERRORS])
def test_max_attribution_refuses_bad_input(impl, case):
    max_fn, _ = impl
    _, mutate, exc_type, pattern = case
    args = _valid()
    mutate(args)
    with pytest.raises(exc_type, match="culnig.max_attribution: " + pattern):
        max_fn(args["act"], args["grad"], args["token_mask"])


# ----------------------------------------------------------------------------------------------------
# Public wrappers, backend(), fake kernels.
# ----------------------------------------------------------------------------------------------------
def test_backend_reports_the_extension_on_cpu():
    assert ops.EXTENSION_LOADED, ops.LOAD.detail
    assert ops.backend("cpu") == "cpu-ext"
    assert ops.backend(torch.device("meta")) == "reference"
    assert ops.backend("cuda") == ("cuda-ext" if ops.LOAD.with_cuda else "reference")


def test_public_wrappers_match_oracle():
    act, grad, mask = _inputs(3, 7, 40, torch.bfloat16, seed=6)
    torch.testing.assert_close(ops.max_attribution(act, grad, mask).double(), _oracle_max(act, grad, mask), rtol=0, atol=0)
    acc = torch.zeros(2, 40, dtype=torch.float64)
    weight, group = torch.tensor([0.2, 0.3, 0.5]), torch.tensor([1, 1, 0])
    expected = _oracle_acc(acc, act, grad, mask, weight, group, 0.0)
    ops.max_attribution_accumulate_(acc, act, grad, mask, weight, group, clamp_min=0.0)
    torch.testing.assert_close(acc, expected, rtol=1e-12, atol=1e-12)


def test_fake_kernels_trace_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    assert ops.EXTENSION_LOADED, ops.LOAD.detail
    with FakeTensorMode():
        act = torch.empty(4, 9, 33, dtype=torch.bfloat16)
        mask = torch.ones(4, 9, dtype=torch.bool)
        out = torch.ops.culnig.max_attribution(act, act, mask)
        assert out.shape == (4, 33) and out.dtype == torch.float32
        acc = torch.empty(2, 33, dtype=torch.float64)
        torch.ops.culnig.max_attribution_accumulate_(acc, act, act, mask, torch.ones(4), torch.zeros(4, dtype=torch.long), None)
        with pytest.raises(TypeError, match="acc must be float64"):
            torch.ops.culnig.max_attribution_accumulate_(acc.float(), act, act, mask, torch.ones(4), torch.zeros(4, dtype=torch.long), None)


def test_opcheck():
    assert ops.EXTENSION_LOADED, ops.LOAD.detail
    act, grad, mask = _inputs(3, 4, 20, torch.float32, seed=7)
    torch.library.opcheck(torch.ops.culnig.max_attribution.default, (act, grad, mask))
    acc = torch.zeros(2, 20, dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.culnig.max_attribution_accumulate_.default,
        (acc, act, grad, mask, torch.rand(3), torch.tensor([0, 1, 0])),
        {"clamp_min": 0.0},
    )


# ----------------------------------------------------------------------------------------------------
# The token list (built once per batch): same results, no data-dependent host call per op call.
# ----------------------------------------------------------------------------------------------------
def _hand_token_list(mask: torch.Tensor):
    """Independent token list: positions of True, ascending, zero-padded; counts (int32)."""
    B, T = mask.shape
    index = torch.zeros(B, T, dtype=torch.int32)
    count = torch.zeros(B, dtype=torch.int32)
    for b in range(B):
        rows = [t for t in range(T) if bool(mask[b, t])]
        index[b, : len(rows)] = torch.tensor(rows, dtype=torch.int32)
        count[b] = len(rows)
    return index, count


def test_token_list_matches_hand_built_and_refuses_an_empty_row():
    gen = torch.Generator().manual_seed(30)
    mask = _random_mask(6, 19, gen, p_true=0.3)
    index, count = ops.token_list(mask)
    want_index, want_count = _hand_token_list(mask)
    assert index.dtype == count.dtype == torch.int32
    assert torch.equal(index, want_index) and torch.equal(count, want_count)
    mask[4] = False
    with pytest.raises(ValueError, match=r"culnig.token_list: token_mask\[4\] has no true token: sample 4"):
        ops.token_list(mask)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 1), (4, 9, 67), (3, 17, 520), (2, 300, 33)], ids=str)
def test_with_token_list_matches_oracle(impl, dtype, shape):
    max_fn, acc_fn = impl
    act, grad, mask = _inputs(*shape, dtype, seed=31)
    mask[0] = False
    mask[0, -1] = True  # all masked but one
    index, count = _hand_token_list(mask)
    torch.testing.assert_close(max_fn(act, grad, mask, index, count).double(), _oracle_max(act, grad, mask),
                               **_tolerance(dtype))
    B, N = shape[0], shape[2]
    acc = torch.randn(2, N, dtype=torch.float64)
    weight, group = torch.rand(B) + 0.1, torch.arange(B) % 2
    expected = _oracle_acc(acc, act, grad, mask, weight, group, 0.0)
    acc_fn(acc, act, grad, mask, weight, group, 0.0, index, count)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(acc, expected, **tol)


def test_token_list_is_read_instead_of_the_mask_values(impl):
    """Given a token list, the op attributes exactly its tokens (the mask is only shape-checked)."""
    max_fn, _ = impl
    act, grad, mask = _inputs(2, 6, 10, torch.float64, seed=32)
    other = torch.zeros_like(mask)
    other[:, 2] = True
    index, count = _hand_token_list(other)
    torch.testing.assert_close(max_fn(act, grad, mask, index, count), _oracle_max(act, grad, other), rtol=0, atol=0)


LIST_ERRORS = [
    ("only index", lambda a: a.update(token_count=None), ValueError, r"token_index and token_count must be given together .*got only token_index"),
    ("index dtype", lambda a: a.update(token_index=a["token_index"].long()), TypeError, r"token_index must be an int32 tensor, got int64"),
    ("index shape", lambda a: a.update(token_index=a["token_index"][:, :4]), ValueError, r"token_index must have shape \[B, T\] = \[4, 5\], got \[4, 4\]"),
    ("count dtype", lambda a: a.update(token_count=a["token_count"].float()), TypeError, r"token_count must be an int32 tensor, got float32"),
    ("count shape", lambda a: a.update(token_count=a["token_count"][:2]), ValueError, r"token_count must have shape \[B\] = \[4\], got \[2\]"),
    ("index on meta", lambda a: a.update(token_index=a["token_index"].to("meta")), ValueError, r"token_index must be on act's device cpu, got meta"),
]
LIST_VALUE_ERRORS = [  # checked on the host for CPU tensors by the extension (free: no sync there)
    ("count zero", lambda a: a["token_count"].__setitem__(1, 0), ValueError, r"token_count\[1\] = 0 is out of range \[1, 5\]"),
    ("count too big", lambda a: a["token_count"].__setitem__(2, 6), ValueError, r"token_count\[2\] = 6 is out of range \[1, 5\]"),
    ("index too big", lambda a: a["token_index"].__setitem__((3, 0), 5), IndexError, r"token_index\[3, 0\] = 5 is out of range \[0, 5\)"),
    ("index negative", lambda a: a["token_index"].__setitem__((0, 0), -1), IndexError, r"token_index\[0, 0\] = -1 is out of range \[0, 5\)"),
    ("group too big", lambda a: a["group"].__setitem__(3, 3), IndexError, r"group\[3\] = 3 is out of range for acc with 3 rows"),
]


def _valid_with_list():
    args = _valid()
    args["token_index"], args["token_count"] = _hand_token_list(args["token_mask"])
    return args


def _call_acc(acc_fn, args):
    acc_fn(args["acc"], args["act"], args["grad"], args["token_mask"], args["weight"], args["group"], 0.0,
           args["token_index"], args["token_count"])


@pytest.mark.parametrize("case", LIST_ERRORS, ids=[e[0] for e in LIST_ERRORS])
def test_token_list_structure_refused_by_every_backend(impl, case):
    _, acc_fn = impl
    _, mutate, exc_type, pattern = case
    args = _valid_with_list()
    mutate(args)
    before = args["acc"].clone()
    with pytest.raises(exc_type, match="culnig.max_attribution_accumulate_: " + pattern):
        _call_acc(acc_fn, args)
    assert torch.equal(args["acc"], before)


@pytest.mark.parametrize("case", LIST_VALUE_ERRORS, ids=[e[0] for e in LIST_VALUE_ERRORS])
def test_extension_checks_token_list_values_on_cpu(case):
    assert ops.EXTENSION_LOADED, ops.LOAD.detail
    _, mutate, exc_type, pattern = case
    args = _valid_with_list()
    mutate(args)
    before = args["acc"].clone()
    with pytest.raises(exc_type, match="culnig.max_attribution_accumulate_: " + pattern):
        _call_acc(torch.ops.culnig.max_attribution_accumulate_, args)
    assert torch.equal(args["acc"], before)


def test_messages_have_one_source():
    """Every refusal's words come from csrc/messages.def: the reference parses it, the C++ expands it, and
    neither file spells a message itself."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    keys = set(ops_reference.MESSAGES)
    assert len(keys) >= 20
    cpp = (root / "csrc" / "culnig.cpp").read_text()
    py = (root / "culnig_ext" / "kernels" / "reference.py").read_text()
    for _, text in ops_reference.MESSAGES.values():
        fragment = max(text.split("{}"), key=len)
        assert len(fragment) >= 12, text
        assert fragment not in cpp and fragment not in py, fragment
    used = {k for k in keys if f"Msg::{k}" in cpp}
    assert used == keys, keys - used


# Aten ops that read tensor data on the host (a device->host sync on a GPU).
_DATA_DEPENDENT = {"aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::equal",
                   "aten::any", "aten::all", "aten::allclose", "aten::tolist"}


def _data_dependent_calls(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name in _DATA_DEPENDENT]


def test_ops_with_token_list_make_no_data_dependent_host_call(impl):
    """The profiler records every aten call, also those made inside the C++ kernel: with the token list there is
    none that reads data on the host (without it, the reference makes them: the detector works)."""
    max_fn, acc_fn = impl
    args = _valid_with_list()
    assert _data_dependent_calls(lambda: _call_acc(acc_fn, args)) == []
    assert _data_dependent_calls(
        lambda: max_fn(args["act"], args["grad"], args["token_mask"], args["token_index"], args["token_count"])) == []
    if max_fn is ops_reference.max_attribution:
        assert _data_dependent_calls(lambda: max_fn(args["act"], args["grad"], args["token_mask"])) != []


def test_scorer_batch_makes_no_data_dependent_host_call_per_site():
    """A scorer batch: the data-dependent host calls (TorchDispatchMode counts item/_local_scalar_dense/nonzero ...)
    do not grow with the number of sites scored: the batch is checked once, the op calls read no data on the host."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import culnig_ext
    from tests.fixtures import random_items, tiny_model

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls += func._schema.name in _DATA_DEPENDENT
            return func(*args, **(kwargs or {}))

    model = tiny_model("llama")
    items = random_items(4, seed=33)
    counts = {}
    for sites in (["layers.0.mlp.gate_proj"], None):
        with Count() as mode:
            table = culnig_ext.score(model, items, batch_size=4, sites=sites, progress=False)
        counts[len(table.sites)] = mode.calls
    assert sorted(counts) == [1, 8]
    assert counts[8] == counts[1], counts
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        culnig_ext.score(model, items, batch_size=4, progress=False)
    inside = [e for e in prof.events() if e.name.startswith("culnig::")]
    assert len(inside) == 8  # one op call per site; the C++ kernels call nothing data-dependent (test above)


@pytest.fixture(params=["default", "avx2", "avx512"])
def capability(request):
    assert ops.EXTENSION_LOADED, ops.LOAD.detail
    if request.param not in ops.cpu_capabilities():
        pytest.skip(f"this CPU cannot run the {request.param} kernel (it runs {ops.cpu_capabilities()})")
    before = ops.cpu_capability()
    ops.set_cpu_capability(request.param)
    try:
        yield request.param
    finally:
        ops.set_cpu_capability(before)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_every_cpu_variant_matches_oracle(capability, dtype, shape):
    act, grad, mask = _inputs(*shape, dtype, seed=34)
    assert ops.cpu_capability() == capability
    out = torch.ops.culnig.max_attribution(act, grad, mask, *_hand_token_list(mask))
    torch.testing.assert_close(out.double(), _oracle_max(act, grad, mask), **_tolerance(dtype))
    acc = torch.zeros(2, shape[2], dtype=torch.float64)
    weight, group = torch.rand(shape[0]) + 0.1, torch.arange(shape[0]) % 2
    expected = _oracle_acc(acc, act, grad, mask, weight, group, 0.0)
    torch.ops.culnig.max_attribution_accumulate_(acc, act, grad, mask, weight, group, 0.0)
    tol = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(acc, expected, **tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_cpu_variant_propagates_nan(capability, dtype):
    g = torch.Generator().manual_seed(35)
    act = torch.randn(3, 9, 300, generator=g).to(dtype)
    grad = torch.randn(3, 9, 300, generator=g).to(dtype)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, :3] = False
    act[0, 5, 37] = float("nan")
    act[1, 8, 130] = float("nan")
    act[0, 1, 64] = float("nan")  # masked
    out = torch.ops.culnig.max_attribution(act, grad, mask).double()
    assert {tuple(i) for i in torch.isnan(out).nonzero().tolist()} == {(0, 37), (1, 130)}


def test_cpu_capability_choice_and_override(monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    assert ops.EXTENSION_LOADED, ops.LOAD.detail
    supported = ops.cpu_capabilities()
    assert supported[0] == "default" and ops.cpu_capability() in supported
    with pytest.raises(ValueError, match="not a CPU capability; use default, avx2 or avx512"):
        ops.set_cpu_capability("sse9")
    root = Path(__file__).resolve().parents[2]
    probe = "import culnig_ext.kernels.ops as o; print(o.cpu_capability())"
    for name in supported:
        env = {**__import__("os").environ, "CULNIG_CPU_CAPABILITY": name, "PYTHONPATH": str(root)}
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and out.stdout.strip() == name, out.stderr
    env = {**__import__("os").environ, "CULNIG_CPU_CAPABILITY": "avx9000", "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "CULNIG_CPU_CAPABILITY=avx9000 is not a CPU capability" in out.stderr
