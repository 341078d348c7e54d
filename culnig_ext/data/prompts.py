"""Prompt rendering and tokenisation: ``MCItem`` -> prompt text -> ``ScoreItem`` (token ids + answer tokens).

Two formats:

* ``"letter"`` (the reference's BLEnD style): the user turn is
  ``"{question} Without any explanation, choose only one from the given alphabet choices(e.g., A, B, C). Provide as
  JSON format: {"answer_choice":""}\\n\\nA. ...\\nB. ...\\n\\nAnswer:"``, rendered with the tokenizer's chat template
  (user turn, generation prompt), followed by the answer prefix ``{"answer_choice":"`` so that the next token is
  the answer letter. Without a chat template the user text is used as plain text, then a space and the prefix.
* ``"cloze"`` (lm-evaluation-harness multiple-choice style): prompt ``"Question: {question}\\nAnswer:"``, each option
  a continuation ``" {option}"``.

Control variants (``control``): ``None`` (the item as is), ``"empty"`` (the question removed: letter format keeps
the instruction and options, cloze keeps only ``"Answer:"``), ``"frame"`` (a content-free question, "Which of the
following is the answer?", keeping the question frame). An item whose question is ``""`` (``make_control``) renders
like ``control="empty"``.

Tokenisation: letter format with a chat template tokenises with ``add_special_tokens=False`` (the template already
holds the special tokens); plain text (no template) and cloze prompts with ``add_special_tokens=True`` (so
tokenizers that add BOS do); cloze options as lm-evaluation-harness does: prompt and option encoded together and
split at the prompt's token count (``encode_pair``), so SentencePiece tokenizers see the option as in context.
Answer letters are checked in
context: ``prompt + letter`` must tokenise to the prompt's tokens plus exactly one token, otherwise the tokenizer is
refused for the letter format.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal

from culnig_ext.data.items import ScoreItem
from culnig_ext.data.schema import MCItem, validate_items

Format = Literal["letter", "cloze"]
Control = Literal["empty", "frame"] | None

LETTER_INSTRUCTION = (
    "Without any explanation, choose only one from the given alphabet choices(e.g., A, B, C). "
    'Provide as JSON format: {"answer_choice":""}'
)
ANSWER_PREFIX = '{"answer_choice":"'
FRAME_QUESTION = "Which of the following is the answer?"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FORMATS: tuple[str, ...] = ("letter", "cloze")
CONTROLS: tuple[str | None, ...] = (None, "empty", "frame")


class TokenizerError(ValueError):
    """The tokenizer cannot encode an item in the requested format; the message names the tokenizer."""


@dataclass(frozen=True)
class ChoiceEncoding:
    """One item encoded for evaluation.

    Attributes:
        prompt_ids: the prompt's token ids.
        choice_ids: per option, the token ids that continue the prompt: the single letter token in the letter
            format, the option's tokens (``" " + option``) in the cloze format.
        letter_ids: letter format: the token id of each option's letter (A, B, C, ...); cloze: None.
    """

    prompt_ids: tuple[int, ...]
    choice_ids: list[tuple[int, ...]]
    letter_ids: tuple[int, ...] | None


def _check(format: str, control: Control) -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown prompt format {format!r}; accepted: {', '.join(FORMATS)}")
    if control not in CONTROLS:
        raise ValueError(f"unknown control {control!r}; accepted: None, 'empty', 'frame'")


def _question(item: MCItem, control: Control) -> str:
    if control == "empty":
        return ""
    if control == "frame":
        return FRAME_QUESTION
    return item.question.strip()


def tokenizer_name(tokenizer: Any) -> str:
    """The tokenizer's ``name_or_path`` (or its class name) for messages."""
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def has_chat_template(tokenizer: Any) -> bool:
    """True if the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def letter_message(item: MCItem, control: Control = None) -> str:
    """The user-turn text of the letter format (before any chat template)."""
    _check("letter", control)
    if len(item.choices) > len(LETTERS):
        raise ValueError(f"item {item.id!r}: {len(item.choices)} options; the letter format supports at most 26")
    question = _question(item, control)
    head = f"{question} {LETTER_INSTRUCTION}" if question else LETTER_INSTRUCTION
    options = "".join(f"{LETTERS[i]}. {choice}\n" for i, choice in enumerate(item.choices))
    return f"{head}\n\n{options}\nAnswer:"


def cloze_prompt(item: MCItem, control: Control = None) -> str:
    """The cloze-format prompt text."""
    _check("cloze", control)
    question = _question(item, control)
    return f"Question: {question}\nAnswer:" if question else "Answer:"


def _is_paper(item: MCItem, format: str, control: Control) -> bool:
    """True for an item of the paper's protocol (``protocols.PaperItem``): it carries its own prompt and labels,
    in the letter format only and without control variants."""
    if getattr(item, "labels", None) is None or not hasattr(item, "benchmark"):
        return False
    if format != "letter" or control is not None:
        raise ValueError(f"item {item.id!r} follows the paper's protocol: letter format only (its answer labels), "
                         f"no control variant (got format={format!r}, control={control!r})")
    return True


def render(item: MCItem, tokenizer: Any, *, format: Format = "letter", control: Control = None) -> str:
    """The exact prompt text the model is fed for ``item`` (before the answer).

    Args:
        item: the item.
        tokenizer: a Hugging Face tokenizer (its chat template is used in the letter format when it has one).
        format: ``"letter"`` or ``"cloze"``.
        control: None, ``"empty"`` or ``"frame"``.
    """
    _check(format, control)
    if _is_paper(item, format, control):
        from culnig_ext.data.protocols import render_paper

        return render_paper(item, tokenizer)[0]
    if format == "cloze":
        return cloze_prompt(item, control)
    message = letter_message(item, control)
    if not has_chat_template(tokenizer):
        return f"{message} {ANSWER_PREFIX}"
    # enable_thinking=False is read by templates of reasoning models (e.g. Qwen3) and ignored by others.
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    if not isinstance(chat, str):
        raise TokenizerError(f"tokenizer {tokenizer_name(tokenizer)!r}: apply_chat_template(tokenize=False) returned {type(chat).__name__}, not text")
    return chat + ANSWER_PREFIX


def _ids(tokenizer: Any, text: str, add_special_tokens: bool) -> tuple[int, ...]:
    return tuple(int(t) for t in tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(context ids, continuation ids)`` as lm-evaluation-harness encodes a request (``HFLM._encode_pair``):
    trailing spaces of the context move to the continuation, ``context + continuation`` is encoded as one text,
    and the continuation is what follows the context's own token count. A SentencePiece tokenizer encodes
    ``" Paris"`` alone as ``["▁", "▁Paris"]`` (its dummy prefix) but ``"Answer: Paris"`` as ``[..., "▁Paris"]``:
    only the joint encoding gives the tokens the model reads in context. Both encodings add special tokens (BOS)
    as the project's prompts do."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = _ids(tokenizer, context + continuation, True)
    context_ids = _ids(tokenizer, context, True)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and context_ids and context_ids[-1] == eos and whole and whole[-1] == eos:
        # a tokenizer that appends EOS to every text: split before it
        whole, context_ids = whole[:-1], context_ids[:-1]
    return context_ids, whole[len(context_ids):]


def encode_choices(
    item: MCItem, tokenizer: Any, *, format: Format = "letter", control: Control = None
) -> ChoiceEncoding:
    """Encode one item's prompt and every option's continuation.

    Raises:
        TokenizerError: letter format: an option letter is not a single token right after the prompt (naming the
            tokenizer); cloze: an option encodes to no tokens.
    """
    text = render(item, tokenizer, format=format, control=control)
    name = tokenizer_name(tokenizer)
    paper = _is_paper(item, format, control)
    if format == "cloze":
        prompt_ids = None
        choice_ids = []
        for i, choice in enumerate(item.choices):
            context_ids, ids = encode_pair(tokenizer, text, " " + choice)
            if prompt_ids is None:
                prompt_ids = context_ids
            elif context_ids != prompt_ids:  # only a trailing space moves, and it moves for every option alike
                raise TokenizerError(f"tokenizer {name!r}: item {item.id!r}: the prompt encodes differently per option")
            if not ids:
                raise TokenizerError(f"tokenizer {name!r}: option {i} {choice!r} of item {item.id!r} encodes to no tokens")
            choice_ids.append(ids)
        return ChoiceEncoding(prompt_ids, choice_ids, None)
    special = not has_chat_template(tokenizer)
    prompt_ids = _ids(tokenizer, text, special)
    letter_ids = []
    for letter in (item.labels if paper else LETTERS[: len(item.choices)]):
        # Check in context: the letter must add exactly one token and leave the prompt's tokens unchanged.
        full = _ids(tokenizer, text + letter, special)
        if len(full) != len(prompt_ids) + 1 or full[: len(prompt_ids)] != prompt_ids:
            raise TokenizerError(
                f"tokenizer {name!r}: answer letter {letter!r} is not a single token after the prompt "
                f"(prompt has {len(prompt_ids)} tokens, prompt + {letter!r} has {len(full)}); "
                "the letter format needs single-token letters, use format='cloze'"
            )
        letter_ids.append(full[-1])
    if len(set(letter_ids)) != len(letter_ids):
        raise TokenizerError(f"tokenizer {name!r}: answer letters share token ids {letter_ids}")
    return ChoiceEncoding(prompt_ids, [(t,) for t in letter_ids], tuple(letter_ids))


def score_item_id(item: MCItem, control: Control) -> str:
    """The ``ScoreItem`` id of an item: its own id, suffixed ``"::ctrl-empty"``/``"::ctrl-frame"`` under a control
    variant so that an item and its control never share an id."""
    return item.id if control is None else f"{item.id}::ctrl-{control}"


def encode(
    items: Iterable[MCItem], tokenizer: Any, *, format: Format = "letter", control: Control = None
) -> list[ScoreItem]:
    """Encode items for neuron scoring.

    Letter format: ``input_ids`` = the rendered prompt (ending in ``{"answer_choice":"``), ``target_ids`` = the gold
    letter's token id. Cloze: ``input_ids`` = the prompt, ``target_ids`` = the gold option's tokens.

    Raises:
        TokenizerError: see ``encode_choices``.
        SchemaError: for invalid items or duplicate ids.
    """
    _check(format, control)
    out: list[ScoreItem] = []
    for item in validate_items(items):
        enc = encode_choices(item, tokenizer, format=format, control=control)
        out.append(ScoreItem(
            id=score_item_id(item, control),
            input_ids=enc.prompt_ids,
            group=item.group,
            target_ids=enc.choice_ids[item.answer_idx],
        ))
    return out

