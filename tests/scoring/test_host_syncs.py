"""No host synchronisation per batch in ``culnig_ext.score``: on CPU stand-ins, the batch's device tensors (input
ids, attention mask, positions) are marked with a tensor subclass that every result computed from them inherits
(logits, P(y|x), ...), and every copy of a marked tensor to the host (``.item``, ``.cpu``, ``.tolist``, ``.numpy``,
``bool`` / ``int`` / ``float``, ``.to("cpu")``) made by culnig_ext's code is counted with its call site. On a GPU each
of those would wait for the device. The count must not grow with the number of batches: the batch's checks use the
mask's CPU copy, and P(y|x) stays on the device until the table is written (one copy per table)."""
from __future__ import annotations

import collections
import os
import sys
from pathlib import Path

import pytest
import torch

import culnig_ext
from culnig_ext.scoring import scorer
from tests.fixtures import random_items, tiny_model

TO_HOST = {torch.Tensor.item, torch.Tensor.cpu, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__,
           torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__}
CALLS: collections.Counter = collections.Counter()
PACKAGE = str(Path(culnig_ext.__file__).resolve().parent).replace("\\", "/") + "/"


def _culnig_caller() -> str | None:
    """file:line of the nearest culnig_ext frame of the caller (None when the call comes from elsewhere, e.g. from
    transformers' own mask checks)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = os.path.realpath(frame.f_code.co_filename).replace("\\", "/")
        if name.startswith(PACKAGE):  # the package's own folder (a checkout may be named culnig_ext too)
            return f"{name[len(PACKAGE):]}:{frame.f_lineno}"
        if "/torch/" not in name:
            return None
        frame = frame.f_back
    return None


class OnDevice(torch.Tensor):
    """A CPU tensor that stands for one on the GPU: results computed from it are OnDevice too, and copying it to
    the host is counted."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        to_host = func in TO_HOST
        if func is torch.Tensor.to:
            dest = kwargs.get("device", args[1] if len(args) > 1 else None)
            to_host = isinstance(dest, (str, torch.device)) and torch.device(dest).type == "cpu"
        if not to_host:
            return super().__torch_function__(func, types, args, kwargs)
        site = _culnig_caller()
        if site is not None:
            CALLS[f"{func.__name__} at {site}"] += 1
        with torch._C.DisableTorchFunctionSubclass():  # the host copy is a plain tensor
            return func(*[a.as_subclass(torch.Tensor) if isinstance(a, OnDevice) else a for a in args], **kwargs)


@pytest.fixture
def device_batches(monkeypatch):
    made = scorer.make_batch

    def make_batch(*args, **kwargs):
        batch = made(*args, **kwargs)
        for name in ("input_ids", "attention_mask", "position_ids"):  # what make_batch moved to the device
            setattr(batch, name, getattr(batch, name).clone().as_subclass(OnDevice))
        return batch

    monkeypatch.setattr(scorer, "make_batch", make_batch)


def host_copies(model, n_batches: int) -> tuple[dict[str, int], culnig_ext.ScoreTable]:
    CALLS.clear()
    table = culnig_ext.score(model, random_items(4 * n_batches, seed=1), batch_size=4, progress=False)
    return dict(CALLS), table


def test_the_stand_in_sees_a_copy_back_from_the_device(device_batches):
    # The check itself can fail: a host copy of a value computed from the batch is counted, with its call site.
    from culnig_ext.data.items import as_score_items

    made = scorer.make_batch(as_score_items(random_items(2), vocab_size=97), {"A": 0, "B": 1, "C": 2},
                             torch.device("cpu"), 0)
    CALLS.clear()
    derived = made.attention_mask.float() * 2
    assert isinstance(derived, OnDevice)
    scorer.BatchState.for_batch(made.attention_mask, made.group, 3)  # no host copy given: one copy back
    assert CALLS == {f"to at scoring/scorer.py:{_line_of('host_mask = attention_mask.detach().to(')}": 1}, CALLS


def _line_of(text: str) -> int:
    lines = open(scorer.__file__).read().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def test_no_host_copy_per_batch(device_batches):
    model = tiny_model("llama")
    few, table_few = host_copies(model, 2)
    many, table_many = host_copies(model, 7)
    assert many == few, f"host copies grow with the batches: 2 batches {few}, 7 batches {many}"
    # What remains is once per table: P(y|x) of all batches copied to the host when the table is written.
    assert few == {f"to at scoring/scorer.py:{_line_of('for _, p in self._pending]).to(')}": 1}, few
    assert table_many.counts.sum() == 28 and table_few.counts.sum() == 8


def test_pending_probabilities_give_the_sums_of_adding_each_batch(device_batches):
    # P(y|x) kept on the device and added at the end: the same float64 sums as adding batch by batch.
    model = tiny_model("llama")
    items = random_items(20, seed=3)
    table = culnig_ext.score(model, items, batch_size=3, progress=False)
    seen = []
    original = scorer._step

    def spy(*args, **kwargs):
        probs = original(*args, **kwargs)
        seen.append((args[2].group.clone(), probs.detach().as_subclass(torch.Tensor).clone()))
        return probs

    expected = torch.zeros(len(table.groups), dtype=torch.float64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scorer, "_step", spy)
        again = culnig_ext.score(model, items, batch_size=3, progress=False)
    for group, probs in seen:
        expected.index_add_(0, group, probs.to(torch.float64))
    assert torch.equal(again.prob_sums, table.prob_sums)
    assert torch.equal(table.prob_sums, expected)


PAIRS = [("layers.0.mlp.gate_proj", 3), ("layers.1.self_attn.k_proj", 0), ("layers.0.mlp.gate_proj", 47)]


def test_item_scores_copy_nothing_to_the_host_in_the_hooks(monkeypatch):
    # item_scores used to copy every site's maxima to the host in its gradient hook: one sync per site and batch.
    # (The OnDevice stand-in cannot see inside the backward pass: torch.autograd.grad on an OnDevice tensor runs
    # with the subclass's torch-function handling disabled. So the host-copy methods themselves are watched here,
    # for calls from the scorer's hook functions.)
    in_hooks = collections.Counter()
    for name in ("cpu", "item", "tolist", "numpy", "to"):
        method = getattr(torch.Tensor, name)

        def watched(self, *args, _method=method, _name=name, **kwargs):
            frame = sys._getframe(1)
            to_host = _name != "to" or (args and isinstance(args[0], (str, torch.device))
                                        and torch.device(args[0]).type == "cpu")
            if to_host and frame.f_code.co_filename == scorer.__file__ and frame.f_code.co_name in ("on_grad", "grad_hook"):
                in_hooks[f"{_name} at scoring/scorer.py:{frame.f_lineno}"] += 1
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, watched)
    gathered = []
    gather = scorer.gather_scores
    monkeypatch.setattr(scorer, "gather_scores", lambda result, pending: (gathered.append(len(pending)),
                                                                          gather(result, pending)))
    got = culnig_ext.item_scores(tiny_model("llama"), random_items(12, seed=2), PAIRS, batch_size=4, progress=False)
    monkeypatch.undo()
    assert in_hooks == {} and gathered == [3 * 2]  # 3 batches x 2 sites, copied together once, at the end
    assert got.shape == (12, 3) and bool((got != 0).all())  # every cell written


def test_gather_scores_makes_one_host_copy_and_places_every_piece():
    result = torch.zeros(4, 3)
    pieces = [
        (torch.tensor([2, 0]), torch.tensor([1]), torch.tensor([[5.0], [6.0]]).as_subclass(OnDevice)),
        (torch.tensor([1]), torch.tensor([0, 2]), torch.tensor([[7.0, 8.0]]).as_subclass(OnDevice)),
        (torch.tensor([3]), torch.tensor([2]), torch.tensor([[9.0]]).as_subclass(OnDevice)),
    ]
    CALLS.clear()
    scorer.gather_scores(result, pieces)
    assert dict(CALLS) == {f"to at scoring/scorer.py:{_line_of('flat = torch.cat([pending[k][2]')}": 1}
    assert torch.equal(result, torch.tensor([[0.0, 6.0, 0.0], [7.0, 0.0, 8.0], [0.0, 5.0, 0.0], [0.0, 0.0, 9.0]]))
    assert pieces == []


def test_item_scores_bounded_wait_gives_the_same_table(monkeypatch):
    # Copying the waiting scores every few pieces (the bound on what stays on the device) changes no value.
    model = tiny_model("llama")
    items = random_items(9, seed=4)
    once = culnig_ext.item_scores(model, items, PAIRS, batch_size=2, progress=False)
    monkeypatch.setattr(scorer, "PENDING_SCORES", 3)
    often = culnig_ext.item_scores(model, items, PAIRS, batch_size=2, progress=False)
    assert torch.equal(once, often) and bool((once != 0).all())


def test_host_tensors_are_staged_once_per_batch_before_the_hooks(monkeypatch):
    # Token list, groups and group rows go to the batch's device in BatchState.for_batch, before the forward
    # pass; the gradient hooks find them there (no copy from the host inside the backward pass).
    staged = collections.Counter()
    original = scorer.stage

    def spy(host, device):
        staged[sys._getframe(1).f_code.co_name] += 1
        return original(host, device)

    monkeypatch.setattr(scorer, "stage", spy)
    for n_batches in (2, 5):
        staged.clear()
        culnig_ext.score(tiny_model("llama"), random_items(4 * n_batches, seed=1), batch_size=4, progress=False)
        assert staged == {"staged": 4 * n_batches}, staged  # token_index, token_count, group, rows


def test_stage_pins_host_memory_only_for_cuda(monkeypatch):
    host = torch.arange(6, dtype=torch.int32)
    assert scorer.stage(host, torch.device("cpu")) is host  # on the CPU nothing is copied or pinned
    calls = []
    to = torch.Tensor.to

    def pin_memory(self):
        calls.append("pin_memory")
        return self.clone()  # stands for the page-locked copy

    def fake_to(self, *args, **kwargs):
        calls.append(("to", str(args[0]), kwargs.get("non_blocking")))
        return to(self, "cpu")  # no CUDA here: the copy stays on the host

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    out = scorer.stage(host, torch.device("cuda", 1))
    monkeypatch.undo()
    assert calls == ["pin_memory", ("to", "cuda:1", True)]
    assert torch.equal(out, host)


def test_expert_gradient_hooks_read_nothing_back_from_the_device(monkeypatch):
    # An MoE layer's experts each get a gradient hook; it used to read the routed positions' maximum, the rows
    # with a routed token (nonzero) and their token list back from the device: several synchronisations per expert
    # per layer on a GPU. Now the rows come from the route's host copy and the batch's host mask (routed_rows).
    # Watched: the host-read methods called in this module while an expert's gradient hook runs, on tensors other
    # than the host ones (routed_rows' inputs and outputs: the route's host positions, the batch's host mask).
    from tests.fixtures import family_model

    reads, host, calls = collections.Counter(), set(), []
    for name in ("cpu", "item", "tolist", "numpy", "nonzero", "__int__", "__bool__", "to"):
        method = getattr(torch.Tensor, name)

        def watched(self, *args, _method=method, _name=name, **kwargs):
            frame = sys._getframe(1)
            # .to("cpu"): an explicit copy to the host; .to(device) moves to a site's device (the CPU here)
            to_host = _name != "to" or (bool(args) and args[0] == "cpu")
            if to_host and id(self) not in host and frame.f_code.co_filename == scorer.__file__:
                outer = frame
                while outer is not None and outer.f_code.co_filename == scorer.__file__:
                    if outer.f_code.co_name == "grad_hook" and "tokens_host" in outer.f_code.co_freevars:
                        reads[f"{_name} at scoring/scorer.py:{frame.f_lineno} ({frame.f_code.co_name})"] += 1
                        break
                    outer = outer.f_back
            return _method(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, watched)
    rows_of = scorer.routed_rows

    def routed_rows(site, tokens, mask):
        host.update((id(tokens), id(mask)))
        rows, sub = rows_of(site, tokens, mask)
        host.update((id(rows), id(sub)))
        calls.append((tokens.device.type, mask.device.type, mask.dtype))
        return rows, sub

    monkeypatch.setattr(scorer, "routed_rows", routed_rows)
    table = culnig_ext.score(family_model("mixtral"), random_items(6, seed=3), batch_size=3, progress=False)
    monkeypatch.undo()
    assert reads == {}
    # the expert hooks ran (2 batches, some experts each) and got host positions and the batch's host mask
    assert len(calls) >= 2 and set(calls) == {("cpu", "cpu", torch.bool)}
    assert any(".experts." in name for name in table.sites)
