"""Cloze options encoded as lm-evaluation-harness does, on a SentencePiece-style tokenizer built offline.

The tokenizer is Llama-2's legacy layout: a normaliser that prepends the dummy prefix "▁" to every text and turns
spaces into "▁", a Unigram model, BOS added. Encoded alone, " Paris" is "▁▁Paris" -> ["▁", "▁Paris"]; in context
the model reads "...Answer:▁Paris" -> [..., "▁Paris"]. The expected ids below are written from the vocabulary.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, processors
from transformers import PreTrainedTokenizerFast

from culnig_ext.data import encode, encode_choices
from culnig_ext.data.prompts import encode_pair
from culnig_ext.data.schema import MCItem

PIECES = ["<unk>", "<s>", "</s>", "▁", "▁Question:", "▁Capital", "\n", "Answer:", "▁Paris", "▁Rome", "▁New",
          "▁York", "▁", "P", "a", "r", "i", "s", "R", "o", "m", "e", "N", "w", "Y", "k", "C", "p", "t", "l", "?",
          "Q", "u", "n", ":", "A"]


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    seen, vocab = set(), []
    for piece in PIECES:
        if piece in seen:
            continue
        seen.add(piece)
        # whole words and the markers score high, single characters low: the segmentation takes whole pieces
        vocab.append((piece, 0.0 if piece in ("<unk>", "<s>", "</s>") else (-1.0 if len(piece) > 1 else -10.0)))
    backend = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def ids(*pieces):
    order = list(dict.fromkeys(PIECES))
    return tuple(order.index(p) for p in pieces)


ITEM = MCItem(id="q1", group="FR", question="Capital", choices=("Paris", "Rome", "New York"), answer_idx=0)


def test_the_tokenizer_has_the_sentencepiece_dummy_prefix():
    tok = sentencepiece_tokenizer()
    # alone, the option gets the dummy prefix and a second "▁": not what the model reads after "Answer:"
    assert tuple(tok(" Paris", add_special_tokens=False)["input_ids"]) == ids("▁", "▁Paris")
    assert tuple(tok("Question: Capital\nAnswer: Paris")["input_ids"]) == ids(
        "<s>", "▁Question:", "▁Capital", "\n", "Answer:", "▁Paris")


def test_cloze_options_are_split_from_the_joint_encoding():
    tok = sentencepiece_tokenizer()
    enc = encode_choices(ITEM, tok, format="cloze")
    assert enc.prompt_ids == ids("<s>", "▁Question:", "▁Capital", "\n", "Answer:")
    assert enc.choice_ids == [ids("▁Paris"), ids("▁Rome"), ids("▁New", "▁York")]
    (scored,) = encode([ITEM], tok, format="cloze")
    assert scored.input_ids == enc.prompt_ids and scored.target_ids == ids("▁Paris")
    # the control prompt ("Answer:" alone) splits the same way
    ctrl = encode_choices(ITEM, tok, format="cloze", control="empty")
    assert ctrl.prompt_ids == ids("<s>", "▁", "Answer:")
    assert ctrl.choice_ids[2] == ids("▁New", "▁York")


def test_encode_pair_moves_trailing_spaces_to_the_continuation():
    tok = sentencepiece_tokenizer()
    context, cont = encode_pair(tok, "Question: Capital\nAnswer: ", "Rome")
    assert context == ids("<s>", "▁Question:", "▁Capital", "\n", "Answer:")
    assert cont == ids("▁Rome")
