"""Activation checkpointing for long inputs: recompute each decoder layer in the backward pass.

Scoring keeps, for the backward pass, every tensor autograd saves in every layer: memory grows with batch x
tokens x layers. Inside :func:`checkpointed_layers` each decoder layer runs under non-reentrant
``torch.utils.checkpoint`` (PyTorch's own, rather than HF ``gradient_checkpointing_enable``, which acts only in
train mode and on weights' gradients): its forward keeps only the layer's inputs, and the layer is run again
when the backward pass reaches it.

Forward hooks inside a layer therefore fire twice: once in the forward pass and once in the recomputation.
:func:`phase` tells a hook which run it is in ("plain" outside any checkpointed layer, "forward", or
"recompute"), so that the scorer registers its gradient hook once (in the forward pass, on the tensor the
backward pass goes through) and takes the activation from the recomputation (so that it is not held from the
forward pass to the backward pass either). Weights are frozen while scoring: only the embedding output
requires grad, which is all non-reentrant checkpointing needs.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from culnig_ext.models.sites import decoder_layers

_state = threading.local()


def phase() -> str:
    """"plain" (no checkpointed layer is running), "forward" (a checkpointed layer's forward pass) or
    "recompute" (its recomputation during the backward pass)."""
    return getattr(_state, "phase", "plain")


@contextmanager
def _in_phase(name: str) -> Iterator[None]:
    before = phase()
    _state.phase = name
    try:
        yield
    finally:
        _state.phase = before


def _checkpointed(forward):
    def run(*args, **kwargs):
        calls = 0

        def layer(*a, **k):
            nonlocal calls
            calls += 1
            with _in_phase("forward" if calls == 1 else "recompute"):
                return forward(*a, **k)

        return checkpoint(layer, *args, use_reentrant=False, **kwargs)

    return run


@contextmanager
def checkpointed_layers(model: nn.Module) -> Iterator[int]:
    """Run every decoder layer of ``model`` under activation checkpointing for the duration; yields the number
    of layers wrapped. The layers' ``forward`` is restored on exit, also on error."""
    try:
        layers = decoder_layers(model)
    except ValueError as exc:
        raise ValueError(f"cannot checkpoint activations: {exc}") from exc
    wrapped = []
    try:
        for layer in layers:
            layer.forward = _checkpointed(layer.forward)  # instance attribute, removed below
            wrapped.append(layer)
        # Recompute the whole layer (not only up to the last tensor the backward needs), so that every site's
        # forward hook sees its recomputed activation.
        with set_checkpoint_early_stop(False):
            yield len(layers)
    finally:
        for layer in wrapped:
            del layer.forward


def needs_grad_hook(output: torch.Tensor) -> bool:
    """Whether a site's forward hook should register its gradient hook on ``output`` in the current phase."""
    return phase() != "recompute" and output.requires_grad
