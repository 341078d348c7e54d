"""Target tasks for the module study (QNLI, MRPC and a builtin QNLI-style set), as ``MCItem``s with the paper's
prompts, and their encoding for training and evaluation.

An item's ``question`` is the whole user message of CULNIG's training script (``train/train.py``: the first prompt
of ``NEURON_PROMPTS['qnli']`` / ``['mrpc']``, filled with the row's fields); ``choices`` are the label digits
``("0", "1")`` and ``answer_idx`` the label, so the training target is the label's digit right after the chat
template's generation prompt, as in the paper. QNLI: label 0 = entailment; MRPC: label 1 = paraphrase.

==================  ==============================================  =============================================
source              train split                                     test split
==================  ==============================================  =============================================
``builtin:qnli``    ``builtin/qnli_mini.jsonl`` rows with split      the rows with split ``test`` (24 of the 60
                    ``train`` (36 questions x a sentence that        questions, both sentences)
                    answers it and one on the topic that does not)
``qnli``            hub ``nyu-mll/glue`` qnli train, shuffled with   qnli validation
                    seed 42, first 10,000 (the paper's)
``mrpc``            hub ``nyu-mll/glue`` mrpc train                  mrpc validation (the paper's)
``qnli:PATH``       a local file with GLUE's columns (idx, question, sentence, label); ``mrpc:PATH`` likewise
``mrpc:PATH``       (idx, sentence1, sentence2, label). The whole file is one split: give the test file separately.
==================  ==============================================  =============================================

The builtin set was written for this project (general-knowledge questions, no cultural content) so that the demo
and tests run offline.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from culnig_ext.data.builtin import BUILTIN_DIR
from culnig_ext.data.evalsets import binary_label, int_field, load_rows, make_item, text_field
from culnig_ext.data.prompts import ChoiceEncoding, TokenizerError, has_chat_template, tokenizer_name
from culnig_ext.data.schema import MCItem, SchemaError, check_unique_ids
from culnig_ext.data.tabular import require_columns

QNLI_MINI_PATH = BUILTIN_DIR / "qnli_mini.jsonl"
TASK_CHOICES = ("0", "1")
# CULNIG's prompt.py, QNLI_PROMPTS[0] and MRPC_PROMPTS[0] (the ones train/train.py uses).
QNLI_PROMPT = (
    "Determine whether the following context sentence contains enough information to answer the question.\n"
    "Question: {question}\nContext: {sentence}\nRespond with:\n0 if it does (entailment)\n"
    "1 if it does not (not_entailment)\nOnly answer with 0 or 1."
)
MRPC_PROMPT = (
    "Determine whether the following two sentences are paraphrases of each other in meaning.\n"
    "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nRespond with:\n1 – if they are paraphrases\n"
    "0 – if they are not paraphrases\nOnly answer with 0 or 1."
)
TASK_SOURCES = ("builtin:qnli", "qnli", "mrpc", "qnli:PATH", "mrpc:PATH")
SPLITS = ("train", "test")
_HUB_SPLITS = {"qnli": {"train": "train", "test": "validation"}, "mrpc": {"train": "train", "test": "validation"}}
QNLI_TRAIN_ITEMS = 10_000
QNLI_SHUFFLE_SEED = 42


def _qnli_item(row: Any, prefix: str) -> MCItem:
    require_columns(row, ("idx", "question", "sentence", "label"))
    prompt = QNLI_PROMPT.format(question=text_field(row, "question"), sentence=text_field(row, "sentence"))
    return make_item(row, id=f"{prefix}:{int_field(row, 'idx')}", group=prefix.split(":")[0], question=prompt,
                 choices=TASK_CHOICES, answer_idx=binary_label(row))


def _mrpc_item(row: Any, prefix: str) -> MCItem:
    require_columns(row, ("idx", "sentence1", "sentence2", "label"))
    prompt = MRPC_PROMPT.format(sentence1=text_field(row, "sentence1"), sentence2=text_field(row, "sentence2"))
    return make_item(row, id=f"{prefix}:{int_field(row, 'idx')}", group=prefix.split(":")[0], question=prompt,
                 choices=TASK_CHOICES, answer_idx=binary_label(row))


def _hub_rows(name: str, split: str) -> list:
    from culnig_ext.data.evalsets import MRPC_HUB, QNLI_HUB

    hub = QNLI_HUB if name == "qnli" else MRPC_HUB
    rows = load_rows(hub[0], hub, split=_HUB_SPLITS[name][split])
    if name == "qnli" and split == "train":
        # The paper: dataset.shuffle(seed=42).select(range(10000)); a seeded permutation of the same size here.
        import numpy as np

        order = np.random.default_rng(QNLI_SHUFFLE_SEED).permutation(len(rows))[:QNLI_TRAIN_ITEMS]
        rows = [rows[i] for i in sorted(order)]
    return rows


def load_task(source: str, split: str = "train", *, max_items: int | None = None) -> list[MCItem]:
    """Items of a target task (see the module docstring for the sources and splits).

    Args:
        source: ``builtin:qnli``, ``qnli``, ``mrpc`` (hub), ``qnli:PATH`` or ``mrpc:PATH`` (a local file).
        split: ``"train"`` or ``"test"``; ignored for a local file (the file is the split).
        max_items: keep the first ``max_items`` items (None: all).

    Raises:
        ValueError: for an unknown source or split; SchemaError / FileNotFoundError from the loaders, naming the
        file, row and field.
    """
    if split not in SPLITS:
        raise ValueError(f"task split must be one of {SPLITS}, got {split!r}")
    if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1):
        raise ValueError(f"max_items must be a positive integer or None, got {max_items!r}")
    if not isinstance(source, str):
        raise ValueError(f"task source must be a string, got {type(source).__name__}")
    name, _, path = source.strip().partition(":")
    if source.strip() == "builtin:qnli":
        rows = [row for row in load_rows(QNLI_MINI_PATH, ("", None, "")) if row.data.get("split") == split]
        items = [_qnli_item(row, "builtin-qnli") for row in rows]
    elif name in ("qnli", "mrpc"):
        make = _qnli_item if name == "qnli" else _mrpc_item
        if path:
            if not Path(path).is_file():
                raise FileNotFoundError(f"task source {source!r}: no such file {path!r}")
            rows = load_rows(path, ("", None, ""))
        else:
            rows = _hub_rows(name, split)
        items = [make(row, name) for row in rows]
    else:
        raise ValueError(f"unknown task source {source!r}; accepted: {', '.join(TASK_SOURCES)}")
    if max_items is not None:
        items = items[:max_items]
    if not items:
        raise SchemaError(f"task source {source!r}: no items for split {split!r}")
    check_unique_ids(items)
    return items


def task_prompt(item: MCItem, tokenizer: Any) -> tuple[str, bool]:
    """The text fed before the answer, and whether to add special tokens when tokenising it: the item's question
    as the user turn of the chat template with the generation prompt (``add_special_tokens=False``: the template
    holds them), or the plain question (``True``) for a tokenizer without a template, as the paper's script does."""
    if not has_chat_template(tokenizer):
        return item.question, True
    chat = tokenizer.apply_chat_template([{"role": "user", "content": item.question}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)
    if not isinstance(chat, str):
        raise TokenizerError(f"tokenizer {tokenizer_name(tokenizer)!r}: apply_chat_template(tokenize=False) "
                             f"returned {type(chat).__name__}, not text")
    return chat, False


def encode_task(item: MCItem, tokenizer: Any) -> ChoiceEncoding:
    """Prompt ids (``task_prompt``) and each choice's ids (tokenised alone, no special tokens, as the paper's
    targets). ``letter_ids`` is set when every choice is one distinct token, so the evaluator ranks the choices'
    next-token logits (its ``letter`` format); otherwise None (use the ``cloze`` format).

    Raises:
        TokenizerError: a choice encodes to no tokens.
    """
    text, special = task_prompt(item, tokenizer)
    prompt = tuple(int(t) for t in tokenizer(text, add_special_tokens=special)["input_ids"])
    choices = []
    for i, choice in enumerate(item.choices):
        ids = tuple(int(t) for t in tokenizer(choice, add_special_tokens=False)["input_ids"])
        if not ids:
            raise TokenizerError(f"tokenizer {tokenizer_name(tokenizer)!r}: choice {i} {choice!r} of item "
                                 f"{item.id!r} encodes to no tokens")
        choices.append(ids)
    single = all(len(c) == 1 for c in choices) and len({c[0] for c in choices}) == len(choices)
    return ChoiceEncoding(prompt, choices, tuple(c[0] for c in choices) if single else None)


__all__ = [
    "MRPC_PROMPT", "QNLI_MINI_PATH", "QNLI_PROMPT", "TASK_CHOICES", "TASK_SOURCES", "encode_task", "load_task",
    "task_prompt",
]
