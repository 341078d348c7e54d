"""evaluate_encoded(): hand-designed logits, an unbatched float64 reference, padding invariance, alignment, JSON."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from culnig_ext.intervention.evaluate import EvalResult, alignment_score, evaluate_encoded
from tests.fixtures import ARCHS, VOCAB, tiny_model


@dataclass(frozen=True)
class Item:  # the fields evaluate reads from an MCItem
    id: str
    group: str
    choices: tuple
    answer_idx: int
    values: tuple | None = None


@dataclass(frozen=True)
class Enc:  # a ChoiceEncoding
    prompt_ids: tuple
    choice_ids: list
    letter_ids: tuple | None


class Bigram(nn.Module):
    """Logits at position t are ``W[input_ids[t]]``: predictions are set by each sequence's last token."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(weight.clone(), freeze=True)
        self.config = SimpleNamespace(vocab_size=weight.shape[1], pad_token_id=0)
        self.calls = []

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask, position_ids, use_cache, logits_to_keep=0):
        self.calls.append((input_ids.shape, logits_to_keep, position_ids.clone(), attention_mask.clone()))
        logits = self.embed(input_ids)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:, :] if logits_to_keep else logits)


LETTERS = (4, 5, 6, 7)  # A B C D


def _designed_weight() -> torch.Tensor:
    w = torch.zeros(12, 12, dtype=torch.float64)
    w[8, 5], w[8, 4] = 3.0, 1.0  # after token 8: B, then A
    w[9, 4], w[9, 6] = 2.0, 1.5  # after 9: A, then C
    w[10, 11], w[10, 6], w[10, 4] = 4.0, 2.0, 1.0  # after 10: token 11 (no letter), best letter C
    w[11, 7] = 2.5  # after 11: D
    return w


def _letter_items():
    items = [
        Item("i0", "X", ("a", "b", "c", "d"), 1),
        Item("i1", "X", ("a", "b", "c", "d"), 2, values=(1, 2, 3, 4)),
        Item("i2", "Y", ("a", "b", "c", "d"), 2, values=(1, 2, 3, 4)),
        Item("i3", "Y", ("a", "b", "c", "d"), 3, values=(1, 2, 3, 4)),
        Item("i4", "Y", ("a", "b", "c", "d"), 0, values=(2, 4, 1, 10)),
    ]
    prompts = [(3, 8), (3, 3, 9), (10,), (3, 9, 11), (8,)]
    encs = [Enc(p, [(t,) for t in LETTERS], LETTERS) for p in prompts]
    return items, encs, prompts


def test_letter_format_known_accuracies_full_vocab():
    w = _designed_weight()
    items, encs, prompts = _letter_items()
    model = Bigram(w)
    res = evaluate_encoded(model, items, encs, format="letter", batch_size=2, progress=False)
    # i0 B=gold, i1 A!=C, i2 token 11 (no letter), i3 D=gold, i4 B!=A
    assert [r.pred for r in res.records] == [1, 0, None, 3, 1]
    assert [r.predicted_token for r in res.records] == [5, 4, 11, 7, 5]
    assert res.correct.tolist() == [True, False, False, True, False]
    assert res.accuracy == pytest.approx(2 / 5)
    assert res.per_group == pytest.approx({"X": 1 / 2, "Y": 1 / 3})
    assert res.acc_norm is None
    # alignment: i1 (1-|1-3|/2)*100 = 0; i2 no option -> 0; i3 100; i4 (1-|4-2|/8)*100 = 75
    assert [r.alignment for r in res.records] == [None, 0.0, 0.0, 100.0, 75.0]
    assert res.alignment == pytest.approx(43.75)
    # option scores = log softmax over the whole vocabulary, at the letters
    for r, p in zip(res.records, prompts):
        row = w[p[-1]]
        expected = [row[t].item() - math.log(sum(math.exp(x) for x in row.tolist())) for t in LETTERS]
        assert r.option_scores == pytest.approx(expected, abs=1e-12)
    # only the last position's logits were asked for, with left padding and explicit positions
    shapes = [c[0] for c in model.calls]
    assert all(c[1] == 1 for c in model.calls)
    assert sorted(s[0] for s in shapes) == [1, 2, 2]


def test_letter_format_restricted_to_choices():
    items, encs, _ = _letter_items()
    res = evaluate_encoded(Bigram(_designed_weight()), items, encs, restrict_to_choices=True, progress=False)
    assert [r.pred for r in res.records] == [1, 0, 2, 3, 1]  # i2: best letter is C
    assert res.accuracy == pytest.approx(3 / 5)
    assert res.per_group == pytest.approx({"X": 1 / 2, "Y": 2 / 3})
    assert res.alignment == pytest.approx((0 + 100 + 100 + 75) / 4)


def test_positions_and_mask_with_left_padding():
    items, encs, _ = _letter_items()
    model = Bigram(_designed_weight())
    evaluate_encoded(model, items, encs, batch_size=8, progress=False)
    (shape, _, positions, mask), = model.calls
    assert shape == (5, 3)
    # sorted by length: (10,), (8,), (3, 8), (3, 3, 9), (3, 9, 11)
    assert mask.tolist() == [[0, 0, 1], [0, 0, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]]
    assert positions.tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 1], [0, 1, 2], [0, 1, 2]]


def test_cloze_acc_and_acc_norm_by_hand():
    w = torch.zeros(12, 12, dtype=torch.float64)
    w[3, 4], w[3, 5] = 2.0, 1.0
    w[5, 6] = 3.0
    lp = torch.log_softmax(w, dim=-1)
    # option 0 "a" -> (4,), option 1 "bbbbbbbbbb" -> (5, 6): ll0 = lp[3,4], ll1 = lp[3,5] + lp[5,6]
    ll0 = lp[3, 4].item()
    ll1 = lp[3, 5].item() + lp[5, 6].item()
    assert ll0 > ll1 and ll0 / 1 < ll1 / 10  # acc picks 0, acc_norm picks 1 (by characters)
    items = [
        Item("q0", "X", ("a", "bbbbbbbbbb"), 1),
        Item("q1", "X", ("a", "bbbbbbbbbb"), 0),
        Item("q2", "Z", ("bbbbbbbbbb", "a"), 1),
    ]
    encs = [
        Enc((3,), [(4,), (5, 6)], None),
        Enc((1, 3), [(4,), (5, 6)], None),
        Enc((3,), [(5, 6), (4,)], None),
    ]
    model = Bigram(w)
    res = evaluate_encoded(model, items, encs, format="cloze", batch_size=4, progress=False)
    assert res.records[0].option_scores == pytest.approx([ll0, ll1], abs=1e-12)
    assert res.records[2].option_scores == pytest.approx([ll1, ll0], abs=1e-12)
    assert [r.pred for r in res.records] == [0, 0, 1]
    assert [r.pred_norm for r in res.records] == [1, 1, 0]
    assert res.correct.tolist() == [False, True, True]
    assert res.correct_norm.tolist() == [True, False, False]
    assert res.accuracy == pytest.approx(2 / 3) and res.acc_norm == pytest.approx(1 / 3)
    assert res.per_group == {"X": 0.5, "Z": 1.0}
    assert res.per_group_norm == {"X": 0.5, "Z": 0.0}
    assert max(c[1] for c in model.calls) == 2  # logits only for the option positions


def test_acc_norm_uses_characters_not_bytes():
    """lm-evaluation-harness divides by len(choice) of the Python string: 'ü' counts 1, though it is 2 bytes."""
    w = torch.zeros(12, 12, dtype=torch.float64)
    w[3, 5] = 0.5
    lp = torch.log_softmax(w, dim=-1)
    ll = [lp[3, 4].item(), lp[3, 5].item()]  # about -2.54 and -2.04
    choices = ("üüü", "abcd")  # 3 characters (6 bytes) vs 4 characters (4 bytes)
    by_chars = max(range(2), key=lambda k: ll[k] / len(choices[k]))
    by_bytes = max(range(2), key=lambda k: ll[k] / len(choices[k].encode()))
    assert by_chars != by_bytes  # the case tells the two apart
    res = evaluate_encoded(
        Bigram(w), [Item("u", "X", choices, by_chars)], [Enc((3,), [(4,), (5,)], None)], format="cloze",
        progress=False,
    )
    assert res.records[0].pred_norm == by_chars and res.acc_norm == 1.0


def _reference_scores(model, item, enc, fmt):
    """Unbatched float64 forward per item (per option for cloze)."""
    out = []
    with torch.no_grad():
        if fmt == "letter":
            logits = model(input_ids=torch.tensor([enc.prompt_ids])).logits[0, -1].double()
            lp = torch.log_softmax(logits, -1)
            return [lp[t].item() for t in enc.letter_ids], int(logits.argmax())
        for choice in enc.choice_ids:
            ids = torch.tensor([tuple(enc.prompt_ids) + tuple(choice)])
            lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            p = len(enc.prompt_ids)
            out.append(sum(lp[p - 1 + j, t].item() for j, t in enumerate(choice)))
    return out, None


def _random_mc(n: int, seed: int = 0, n_choices: int = 4):
    g = torch.Generator().manual_seed(seed)
    items, encs = [], []
    for i in range(n):
        plen = int(torch.randint(1, 9, (1,), generator=g))
        prompt = tuple(torch.randint(3, VOCAB, (plen,), generator=g).tolist())
        choices, choice_ids = [], []
        for k in range(n_choices):
            clen = int(torch.randint(1, 4, (1,), generator=g))
            choice_ids.append(tuple(torch.randint(3, VOCAB, (clen,), generator=g).tolist()))
            choices.append("x" * int(torch.randint(1, 12, (1,), generator=g)))
        letters = tuple(torch.randperm(VOCAB - 3, generator=g)[:n_choices].add(3).tolist())
        answer = int(torch.randint(0, n_choices, (1,), generator=g))
        items.append(Item(f"r{i}", "ABC"[i % 3], tuple(choices), answer))
        encs.append(Enc(prompt, choice_ids, letters))
    return items, encs


@pytest.mark.parametrize("arch", ARCHS)
def test_cloze_matches_unbatched_reference_and_is_padding_invariant(arch):
    model = tiny_model(arch)
    items, encs = _random_mc(7, seed=1)
    results = [
        evaluate_encoded(model, items, encs, format="cloze", batch_size=bs, progress=False) for bs in (1, 3, 32)
    ]
    for item, enc, *recs in zip(items, encs, *(r.records for r in results)):
        expected, _ = _reference_scores(model, item, enc, "cloze")
        lengths = [len(c) for c in item.choices]
        for rec in recs:
            assert rec.option_scores == pytest.approx(expected, abs=1e-9)
            assert rec.pred == max(range(4), key=lambda k: expected[k])
            assert rec.pred_norm == max(range(4), key=lambda k: expected[k] / lengths[k])
            assert rec.correct == (rec.pred == item.answer_idx)
    assert len({(r.accuracy, r.acc_norm) for r in results}) == 1


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("restrict", [False, True])
def test_letter_matches_unbatched_reference(arch, restrict):
    model = tiny_model(arch)
    items, encs = _random_mc(9, seed=2)
    res = evaluate_encoded(model, items, encs, batch_size=4, restrict_to_choices=restrict, progress=False)
    n_correct = 0
    for item, enc, rec in zip(items, encs, res.records):
        expected, argmax = _reference_scores(model, item, enc, "letter")
        assert rec.option_scores == pytest.approx(expected, abs=1e-9)
        if restrict:
            pred = max(range(4), key=lambda k: expected[k])
        else:
            pred = enc.letter_ids.index(argmax) if argmax in enc.letter_ids else None
        assert rec.pred == pred
        assert rec.correct == (pred == item.answer_idx)
        n_correct += pred == item.answer_idx
    assert res.accuracy == pytest.approx(n_correct / 9)


def test_model_mode_is_restored():
    model = tiny_model("llama").train()
    items, encs = _random_mc(2)
    evaluate_encoded(model, items, encs, progress=False)
    assert model.training


def test_alignment_score_by_hand():
    assert alignment_score(3, 5, 1, 10) == pytest.approx((1 - 2 / 5) * 100)  # span max(4, 5) = 5
    assert alignment_score(5, 5, 1, 10) == 100.0
    assert alignment_score(1, 10, 1, 10) == 0.0
    with pytest.raises(ValueError, match="no spread"):
        alignment_score(2, 2, 2, 2)


def test_json_round_trip(tmp_path):
    items, encs, _ = _letter_items()
    res = evaluate_encoded(Bigram(_designed_weight()), items, encs, progress=False)
    res.records[0].option_scores[0] = -math.inf  # non-finite values survive as strings
    path = tmp_path / "out" / "eval.json"
    res.save(path)
    raw = json.loads(path.read_text())
    assert raw["summary"]["accuracy"] == pytest.approx(0.4)
    assert raw["summary"]["per_group"] == pytest.approx({"X": 0.5, "Y": 1 / 3})
    assert raw["records"][0]["option_scores"][0] == "-inf"
    back = EvalResult.load(path)
    assert back.records == res.records
    assert back.accuracy == res.accuracy and back.alignment == res.alignment
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temp file left


@pytest.mark.parametrize(
    "items, encs, fmt, match",
    [
        ([Item("a", "X", ("p", "q"), 2)], [Enc((3,), [(4,), (5,)], (4, 5))], "letter", r"'a'.*answer_idx 2"),
        ([Item("b", "X", ("p", "q"), 0)], [Enc((3,), [(4,), (5,)], (4, 4))], "letter", r"'b'.*share a token"),
        ([Item("c", "X", ("p", "q"), 0)], [Enc((3,), [(4,), (5,)], None)], "letter", r"'c'.*no letter_ids"),
        ([Item("d", "X", ("p", "q"), 0)], [Enc((3,), [(4,), ()], None)], "cloze", r"'d'.*choice 1 encodes to no"),
        ([Item("e", "X", ("p", ""), 0)], [Enc((3,), [(4,), (5,)], None)], "cloze", r"'e'.*choice 1 is empty"),
        ([Item("f", "X", ("p", "q"), 0)], [Enc((3, 99), [(4,), (5,)], None)], "cloze", r"'f'.*token id 99"),
        ([Item("g", "X", ("p", "q"), 0, values=(1,))], [Enc((3,), [(4,), (5,)], None)], "cloze", r"'g'.*values"),
        (
            [Item("h", "X", ("p", "q"), 0), Item("h", "Y", ("p", "q"), 0)],
            [Enc((3,), [(4,), (5,)], None)] * 2,
            "cloze",
            r"'h'.*duplicate id",
        ),
    ],
)
def test_bad_items_are_refused_naming_the_item(items, encs, fmt, match):
    with pytest.raises(ValueError, match=match):
        evaluate_encoded(Bigram(torch.zeros(12, 12)), items, encs, format=fmt, progress=False)


def test_bad_arguments():
    items, encs, _ = _letter_items()
    model = Bigram(_designed_weight())
    with pytest.raises(ValueError, match="format"):
        evaluate_encoded(model, items, encs, format="mcq", progress=False)
    with pytest.raises(ValueError, match="letter format only"):
        evaluate_encoded(model, items, encs, format="cloze", restrict_to_choices=True, progress=False)
    with pytest.raises(ValueError, match="5 items but 4 encodings"):
        evaluate_encoded(model, items, encs[:4], progress=False)


# ------------------------------------------------------------------ end to end: MCItem + tokenizer + encode_choices
def char_tokenizer():
    """An offline character-level tokenizer (every printable character is one token; no chat template)."""
    import string

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["[UNK]", "[PAD]"] + sorted(set(string.printable) - set("\x0b\x0c\r\t"))
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def char_model(arch: str = "llama", seed: int = 0):
    """A tiny random model whose vocabulary matches ``char_tokenizer`` and that takes ~250-token prompts."""
    from transformers import AutoModelForCausalLM

    from tests.fixtures import tiny_config

    torch.manual_seed(seed)
    cfg = tiny_config(arch)
    cfg.vocab_size, cfg.max_position_embeddings, cfg.pad_token_id = 98, 512, 1
    cfg._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model.to(torch.float64).eval()


def mc_items():
    from culnig_ext.data.schema import MCItem

    return [
        MCItem(id="m0", group="US", question="Which drink?", choices=("tea", "coffee", "milk"), answer_idx=1),
        MCItem(id="m1", group="JP", question="Which sport is most popular?", choices=("baseball", "sumo"),
               answer_idx=0),
        MCItem(id="m2", group="US", question="How much do you agree?", choices=("1", "2", "3", "4"), answer_idx=2,
               values=(1, 2, 3, 4)),
        MCItem(id="m3", group="JP", question="Food?", choices=("rice", "bread", "noodles"), answer_idx=2),
        MCItem(id="m4", group="JP", question="Rate it.", choices=("low", "mid", "high"), answer_idx=0,
               values=(0, 5, 10)),
    ]


@pytest.mark.parametrize("fmt, restrict", [("letter", False), ("letter", True), ("cloze", False)])
def test_evaluate_end_to_end_matches_unbatched_reference(fmt, restrict):
    from culnig_ext.data.prompts import encode_choices
    from culnig_ext.intervention.evaluate import evaluate

    tokenizer, model, items = char_tokenizer(), char_model(), mc_items()
    res = evaluate(model, tokenizer, items, format=fmt, batch_size=2, restrict_to_choices=restrict, progress=False)
    assert [r.id for r in res.records] == [it.id for it in items]
    correct, alignments = [], []
    for item, rec in zip(items, res.records):
        enc = encode_choices(item, tokenizer, format=fmt)
        expected, argmax = _reference_scores(model, item, enc, fmt)
        assert rec.option_scores == pytest.approx(expected, abs=1e-9)
        k = len(item.choices)
        if fmt == "cloze":
            pred = max(range(k), key=lambda j: expected[j])
            pred_norm = max(range(k), key=lambda j: expected[j] / len(item.choices[j]))
            assert rec.pred_norm == pred_norm
        elif restrict:
            pred = max(range(k), key=lambda j: expected[j])
        else:
            pred = enc.letter_ids.index(argmax) if argmax in enc.letter_ids else None
        assert rec.pred == pred
        correct.append(pred == item.answer_idx)
        if item.values is not None:
            v, g = item.values, item.values[item.answer_idx]
            hand = 0.0 if pred is None else (1 - abs(v[pred] - g) / max(abs(min(v) - g), abs(max(v) - g))) * 100
            alignments.append(hand)
            assert rec.alignment == pytest.approx(hand)
    assert res.correct.tolist() == correct
    assert res.accuracy == pytest.approx(sum(correct) / 5)
    assert res.per_group == pytest.approx(
        {"US": (correct[0] + correct[2]) / 2, "JP": (correct[1] + correct[3] + correct[4]) / 3}
    )
    assert res.alignment == pytest.approx(sum(alignments) / 2)
