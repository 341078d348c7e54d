"""``culnig prompts``: what the model sees. Each item's exact input text (after the chat template) and its target,
one JSON object per line, for any item source and either protocol.

A line: ``{"id", "group", "input", "target", "choices", "answer_idx", "n_input_tokens"}`` plus ``"variant"`` and
``"system"`` for the paper's protocol. ``input`` is the text the tokenizer encodes (the chat template applied, and in
our letter format the answer prefix ``{"answer_choice":"``); ``target`` is what the model should produce next: the
answer label (letter format; the paper's own labels, e.g. ``"2"``) or ``" " + option`` (cloze).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from culnig_ext._utils.atomic import atomic_write_text
from culnig_ext.data import load_items, render
from culnig_ext.data.prompts import LETTERS, encode_choices
from culnig_ext.data.protocols import BENCHMARKS
from culnig_ext.data.schema import MCItem

# Sources the paper evaluates with its own prompts: with ``protocol="paper"`` they are read as ``paper:<name>``.
_PAPER_ALIASES = {"builtin:countryrc": "paper:countryrc", "builtin:countryrc-test": "paper:countryrc"}


def paper_source(source: str) -> str:
    """The ``paper:`` form of a source under the paper's protocol: ``normad:PATH`` -> ``paper:normad:PATH``,
    ``countryrc:PATH`` -> ``paper:countryrc:PATH``, ``builtin:countryrc`` -> ``paper:countryrc``; BLEnD and other
    sources are unchanged (the paper's BLEnD prompt is our letter format)."""
    if source.startswith("paper:"):
        return source
    if source in _PAPER_ALIASES:
        return _PAPER_ALIASES[source]
    name, _, rest = source.partition(":")
    if name in BENCHMARKS and rest:
        return f"paper:{name}:{rest.split('@')[0]}"
    return source


def prompt_records(items: Iterable[MCItem], tokenizer: Any, *, format: str = "letter") -> list[dict[str, Any]]:
    """One record per item (see the module docstring); the input is tokenised once to count its tokens and to
    check that the target is encodable (``encode_choices`` raises otherwise)."""
    out = []
    for item in items:
        text = render(item, tokenizer, format=format)
        enc = encode_choices(item, tokenizer, format=format)
        labels = getattr(item, "labels", None) or tuple(LETTERS[: len(item.choices)])
        rec: dict[str, Any] = {
            "id": item.id, "group": item.group, "input": text,
            "target": labels[item.answer_idx] if format == "letter" else " " + item.choices[item.answer_idx],
            "choices": list(item.choices), "answer_idx": item.answer_idx, "n_input_tokens": len(enc.prompt_ids),
        }
        if hasattr(item, "benchmark"):
            rec["variant"], rec["system"] = item.variant, item.system
        out.append(rec)
    return out


def load_prompt_items(source: str, *, split: str = "all", protocol: str = "ours", seed: int = 0) -> list[MCItem]:
    """The items of ``source`` under ``protocol`` (see ``paper_source``)."""
    return load_items(paper_source(source) if protocol == "paper" else source, split=split, seed=seed)


def write_prompts(items: Iterable[MCItem], tokenizer: Any, out: str | Path, *, format: str = "letter") -> int:
    """Write the records of ``items`` to ``out`` (JSON lines, atomically); returns the number of lines."""
    records = prompt_records(items, tokenizer, format=format)
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return len(records)
