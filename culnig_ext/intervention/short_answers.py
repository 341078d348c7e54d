"""Short-answer evaluation (BLEnD SAQ, ``data/saq.py``): bounded, batched, greedy generation under each condition
(nothing / a neuron set / random sets inhibited), scored against the annotators' answers, one report row per
(country, language).

Generation: the prompt is the user turn under the tokenizer's chat template (generation prompt on, thinking off;
plain text without a template), left-padded in batches, ``do_sample=False`` (greedy: deterministic),
``max_new_tokens`` bounded (the paper allows 512; on CPU we default to 48).
"""
from __future__ import annotations

import logging

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from culnig_ext.data.saq import SAQItem, score_answer
from culnig_ext.intervention.inhibit import inhibit

log = logging.getLogger("culnig")


@dataclass
class SAQRecord:
    id: str
    group: str
    language: str
    response: str
    correct: bool


@dataclass
class SAQResult:
    """Per-item records of one condition (``records``/``correct`` as ``EvalResult``, for ``report.accuracy_row``)."""

    records: list[SAQRecord] = field(default_factory=list)

    @property
    def correct(self) -> np.ndarray:
        return np.array([r.correct for r in self.records], dtype=np.float64)

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if self.records else float("nan")

    def subset(self, keep: Sequence[bool]) -> "SAQResult":
        return SAQResult([r for r, k in zip(self.records, keep) if k])


def chat_prompt(tokenizer: Any, text: str) -> str:
    """The user turn under the chat template (plain ``text`` without one)."""
    if not getattr(tokenizer, "chat_template", None):
        return text
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 48, batch_size: int = 8,
             progress: bool = True) -> list[str]:
    """Greedy continuations of ``prompts`` (already templated), batched with left padding."""
    from tqdm.auto import tqdm

    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}")
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    special = not getattr(tokenizer, "chat_template", None)
    device = next(model.parameters()).device
    out: list[str] = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress):
            chunk = list(prompts[start:start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=special).to(device)
            ids = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 temperature=None, top_p=None, top_k=None)
            out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


def evaluate_saq(model, tokenizer, items: Sequence[SAQItem], conditions: Sequence[Any], *, max_new_tokens: int = 48,
                 batch_size: int = 8, progress: bool = True) -> dict[str, SAQResult]:
    """``{condition name: SAQResult}`` for conditions with ``name`` and ``neurons`` (None = nothing inhibited)."""
    prompts = [chat_prompt(tokenizer, it.prompt) for it in items]
    results: dict[str, SAQResult] = {}
    for cond in conditions:
        if cond.neurons is None:
            responses = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                 progress=progress)
        else:
            with inhibit(model, cond.neurons):
                responses = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, progress=progress)
        results[cond.name] = SAQResult([SAQRecord(it.id, it.group, it.language, r, score_answer(r, it.answers,
                                                                                               it.language))
                                        for it, r in zip(items, responses)])
        log.info(f"short answers {cond.name:<14} accuracy {results[cond.name].accuracy:.3f}")
    return results
