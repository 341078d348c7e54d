"""``models.moe``: the routing of the tapped experts loop, against ``torch.where`` per expert written out here
(the same rows and slots in the same order, so the sums are bit-identical), indices outside the experts skipped,
one host copy per call whatever the number of experts, and a tapped Mixtral/Qwen2-MoE forward equal to the model's
own."""
from __future__ import annotations

import pytest
import torch

from culnig_ext.models import moe
from tests.fixtures import family_model


def reference_route(top_k_index, num_experts):
    out = []
    for e in range(num_experts):
        rows, slots = torch.where(top_k_index == e)
        if rows.numel():
            out.append((e, rows, slots))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_route_is_torch_where_per_expert(seed):
    g = torch.Generator().manual_seed(seed)
    num_experts, tokens, k = 6, 17, 2
    index = torch.stack([torch.randperm(num_experts + 1, generator=g)[:k] for _ in range(tokens)])  # E marks EP
    got = moe.route(index, num_experts)
    want = reference_route(index, num_experts)
    assert [e for e, *_ in got] == [e for e, _, _ in want]
    for (_, rows, slots, rows_host), (_, wrows, wslots) in zip(got, want):
        assert torch.equal(rows, wrows) and torch.equal(slots, wslots)
        assert rows_host.device.type == "cpu" and torch.equal(rows_host, wrows)
    assert all(e < num_experts for e, *_ in got)


def test_route_skips_unused_and_foreign_experts():
    index = torch.tensor([[3, 7], [3, 0], [7, 3]])  # 7: another rank's expert (num_experts = 4)
    got = [(e, r.tolist(), s.tolist(), h.tolist()) for e, r, s, h in moe.route(index, 4)]
    assert got == [(0, [1], [1], [1]), (3, [0, 1, 2], [0, 0, 1], [0, 1, 2])]


class CountHostReads(torch.overrides.TorchFunctionMode):
    """Counts the calls that read a tensor's values on the host (a synchronisation when the tensor is on a GPU),
    except reads of the host copy made by ``.cpu()`` and of its slices, which are host memory already."""

    READS = (torch.Tensor.tolist, torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__, torch.unique,
             torch.nonzero, torch.Tensor.nonzero, torch.Tensor.cpu)

    def __init__(self):
        super().__init__()
        self.calls, self.host = [], set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        on_host = bool(args) and isinstance(args[0], torch.Tensor) and id(args[0]) in self.host
        if on_host:
            if isinstance(out, torch.Tensor):
                self.host.add(id(out))  # a slice or view of the host copy
        elif func in self.READS or (func is torch.where and len(args) == 1):
            self.calls.append(func)
            if func is torch.Tensor.cpu:
                self.host.add(id(out))
        return out


def test_one_host_copy_per_call():
    for num_experts in (4, 32):
        index = torch.randint(0, num_experts, (64, 2), generator=torch.Generator().manual_seed(num_experts))
        with CountHostReads() as count:
            routes = moe.route(index, num_experts)
        assert count.calls == [torch.Tensor.cpu] and len(routes) > 3
        with CountHostReads() as count:  # the counter sees the old way's syncs: one where per expert
            reference_route(index, num_experts)
        assert len(count.calls) == num_experts


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"])
def test_tapped_forward_equals_the_models_own(arch):
    model = family_model(arch)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits
    experts = [m for m in model.modules() if hasattr(m, "gate_up_proj") and hasattr(m, "_apply_gate")]
    assert experts
    seen = []
    handles = [moe.tap(m, lambda e, gate_up, rows, rows_host: seen.append(e)) for m in experts]
    try:
        with torch.no_grad():
            got = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    assert seen and torch.allclose(got, want, rtol=0, atol=1e-12)
