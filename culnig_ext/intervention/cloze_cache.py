"""Cloze evaluation that runs each prompt once: the options continue from the prompt's key/value cache.

``evaluate.evaluate_encoded(format="cloze")`` feeds ``prompt + option[:-1]`` once per option, so a 4-option item
runs its prompt 4 times. Here a batch of prompts (left-padded, explicit position ids) runs once with
``use_cache=True``; its last logits score every option's first token; the cache rows are then repeated once per
option (``Cache.batch_select_indices``) and the options' remaining tokens (right-padded, positions continuing
from each prompt) run against it. Each option's summed log-likelihood is the same as ``evaluate_encoded``'s up
to float rounding (tested), while the prompt tokens, most of a BLEnD item, are computed once instead of once per
option. This is what makes ten or more random neuron sets affordable in ``culnig run`` (``benchmarks/bench_eval.py``
measures the speed-up). Inhibition hooks apply to both passes as to any forward.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from culnig_ext._utils.progress import bar as progress_bar
from culnig_ext.data.batching import left_pad, length_sorted_batches, pad_id, vocab_size
from culnig_ext.intervention.evaluate import (
    EvalResult,
    item_alignment,
    choice_sequences,
    upcast_logits,
    checked_inputs,
    cloze_record,
)


def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    logits = upcast_logits(logits)
    return logits - logits.logsumexp(-1, keepdim=True)


def evaluate_cloze_cached(
    model: nn.Module,
    items: Sequence[Any],
    encodings: Sequence[Any],
    *,
    batch_size: int = 16,
    control: str | None = None,
    progress: bool = True,
) -> EvalResult:
    """Cloze evaluation of encoded items with the prompt computed once per item (module docstring).

    Args:
        model: a Hugging Face causal LM that returns ``past_key_values`` with ``use_cache=True``.
        items, encodings: as for ``evaluate.evaluate_encoded`` (``encodings[i].prompt_ids``, ``.choice_ids``).
        batch_size: prompts per forward (the option pass holds ``batch_size * options`` rows).

    Returns:
        ``EvalResult`` (format ``"cloze"``), the same records as ``evaluate_encoded(format="cloze")``.
    """
    items, encodings = checked_inputs(items, encodings, batch_size)
    seqs, _ = choice_sequences(items, encodings, "cloze", vocab_size(model))  # validates every item, names the bad one
    options: list[list[tuple[int, ...]]] = [[] for _ in items]
    for s in seqs:
        options[s.item].append(s.targets)
    prompts = [tuple(int(t) for t in enc.prompt_ids) for enc in encodings]

    device = model.get_input_embeddings().weight.device
    pad = pad_id(model)
    scores: list[list[float]] = [[math.nan] * len(it.choices) for it in items]
    bar = progress_bar(total=len(items), desc="evaluating (cloze, cached prompts)", unit="item",
                       disable=not progress, dynamic_ncols=True)
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            for batch in length_sorted_batches([len(p) for p in prompts], batch_size):
                ids, mask, pos = left_pad([prompts[i] for i in batch], pad)
                out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                            use_cache=True)
                first = _log_probs(out.logits[:, -1, :])  # [B, V]: predicts each option's first token
                rows: list[tuple[int, int, int]] = []  # (batch row, item, option) of options with >1 token
                for row, i in enumerate(batch):
                    for k, opt in enumerate(options[i]):
                        scores[i][k] = float(first[row, opt[0]])
                        if len(opt) > 1:
                            rows.append((row, i, k))
                if rows:
                    cache = out.past_key_values
                    width = max(len(options[i][k]) - 1 for _, i, k in rows)
                    fed = torch.full((len(rows), width), pad, dtype=torch.int64)
                    targets = torch.zeros((len(rows), width), dtype=torch.int64)
                    valid = torch.zeros((len(rows), width), dtype=torch.bool)
                    for r, (_, i, k) in enumerate(rows):
                        opt = options[i][k]
                        fed[r, : len(opt) - 1] = torch.tensor(opt[:-1])
                        targets[r, : len(opt) - 1] = torch.tensor(opt[1:])
                        valid[r, : len(opt) - 1] = True
                    select = torch.tensor([row for row, _, _ in rows], dtype=torch.int64)
                    cache.batch_select_indices(select.to(device))
                    full_mask = torch.cat([mask[select], valid.to(mask.dtype)], dim=1)
                    cont_pos = mask[select].sum(1, keepdim=True) + torch.arange(width)[None, :]
                    logits = model(input_ids=fed.to(device), attention_mask=full_mask.to(device),
                                   position_ids=cont_pos.to(device), past_key_values=cache, use_cache=True).logits
                    lp = _log_probs(logits).gather(-1, targets.to(logits.device).unsqueeze(-1)).squeeze(-1)
                    # where(), not a product: a padded slot's log-prob may be -inf, and -inf * 0 is nan
                    sums = torch.where(valid.to(lp.device), lp.double(), 0.0).sum(1).cpu().tolist()
                    for r, (_, i, k) in enumerate(rows):
                        scores[i][k] += sums[r]
                bar.update(len(batch))
    finally:
        model.train(was_training)
        bar.close()

    records = []
    for pos, item in enumerate(items):
        record = cloze_record(item, scores[pos])
        record.alignment = item_alignment(item, record.pred, f"item {item.id!r} (position {pos})")
        records.append(record)
    config = getattr(model, "config", None)
    metadata = {"model": str(getattr(config, "_name_or_path", "") or type(model).__name__)}
    return EvalResult(records, "cloze", False, control, metadata)
