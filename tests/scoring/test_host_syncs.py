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
