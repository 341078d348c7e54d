"""What the scorer and the evaluator share about feeding a decoder LM: left-padded, length-sorted batches with
explicit position ids, and the few model facts they need (vocabulary size, pad id, ``logits_to_keep``).

Left padding puts every sequence's last token at the same position, so the logits that predict targets are the
last few positions for every row; explicit ``position_ids`` (count of real tokens so far) make a padded row compute
exactly what the unpadded sequence would, up to float rounding.
"""
from __future__ import annotations

import inspect
from typing import Iterator, Sequence

import torch
from torch import nn

from culnig_ext.models.sites import text_config


def vocab_size(model: nn.Module) -> int | None:
    """Rows of the output head (what the logits index), else the config's vocabulary size."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and hasattr(head, "out_features"):
        return int(head.out_features)
    return getattr(text_config(model), "vocab_size", None)


def pad_id(model: nn.Module) -> int:
    """The config's pad token id, or 0: any id works, since padded positions are masked out of everything."""
    pad = getattr(text_config(model), "pad_token_id", None)
    return pad if isinstance(pad, int) and pad >= 0 else 0


def takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether ``model.forward`` can compute logits for the last positions only."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (stable sort: ties keep input order), so padding is small."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def left_pad(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)``, each ``[B, T]`` int64 on the CPU, for left-padded ``seqs``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.int64)
    mask = torch.zeros((len(seqs), width), dtype=torch.int64)
    for row, seq in enumerate(seqs):
        if len(seq):
            ids[row, width - len(seq) :] = torch.as_tensor(seq, dtype=torch.int64)
            mask[row, width - len(seq) :] = 1
    position_ids = (mask.cumsum(1) - 1).clamp_(min=0)
    return ids, mask, position_ids
