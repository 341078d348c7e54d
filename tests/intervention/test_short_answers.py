"""BLEnD short answers: items read from the reference BLEnD folder (checked against the JSON/CSV read here),
lemma-based scoring on hand-made cases, and greedy batched generation against a step-by-step float64 argmax loop."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from culnig_ext.data.saq import answer_part, load_saq, normalise, score_answer
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.studies.conditions import Condition
from culnig_ext.intervention.short_answers import evaluate_saq, generate
from culnig_ext.studies.conditions import saq_rows
from tests.data.test_protocols import byte_tokenizer

from tests.shared_data import BLEND, needs_shared_data


@needs_shared_data
def test_load_saq_spain_and_us():
    items = load_saq(BLEND, countries=["Spain", "US"], split="test", max_per_country=3)
    spain = [i for i in items if i.group == "Spain"]
    us = [i for i in items if i.group == "US"]
    assert {i.language for i in spain} == {"en", "es"} and {i.language for i in us} == {"en"}
    assert len({i.question_id for i in spain}) == 3 and len(us) == 3
    ann = json.loads((BLEND / "annotations" / "Spain_data.json").read_text(encoding="utf-8"))
    with open(BLEND / "questions" / "Spain_questions.csv", encoding="utf-8") as f:
        topic = {r["ID"]: r["Topic"] for r in csv.DictReader(f)}
    with open(BLEND / "prompts" / "Spain_prompts.csv", encoding="utf-8") as f:
        templates = {r["id"]: r for r in csv.DictReader(f)}
    first_test = [q for q in ann if topic.get(q) in ("Education", "Family", "Holidays/Celebration/Leisure")][:3]
    assert [i.question_id for i in spain if i.language == "es"] == first_test
    it = next(i for i in spain if i.language == "es")
    rec = ann[it.question_id]
    assert it.prompt == templates[it.template_id]["Translation"].replace("{q}", rec["question"])
    assert set(it.answers) == {a for x in rec["annotations"] if x["count"] > 0 for a in x["answers"]}
    en = next(i for i in spain if i.language == "en" and i.question_id == it.question_id)
    assert en.prompt == templates[it.template_id]["English"].replace("{q}", rec["en_question"])
    assert set(en.answers) == {a for x in rec["annotations"] if x["count"] > 0 for a in x["en_answers"]}
    # deterministic: the same items again
    assert load_saq(BLEND, countries=["Spain", "US"], split="test", max_per_country=3) == items


@needs_shared_data
def test_load_saq_translated_placeholder(tmp_path):
    """BLEnD's Algeria prompts translate the placeholder in two rows ({س}, {ف}): the real file loads, every Arabic
    prompt holds its question; a template with no placeholder at all is refused naming the file and row."""
    items = load_saq(BLEND, countries=["Algeria"], split="all")
    ann = json.loads((BLEND / "annotations" / "Algeria_data.json").read_text(encoding="utf-8"))
    local = [i for i in items if i.language != "en"]
    with open(BLEND / "prompts" / "Algeria_prompts.csv", encoding="utf-8") as f:
        translated = {r["id"]: r["Translation"] for r in csv.DictReader(f) if "{q}" not in r["Translation"]}
    assert len(translated) == 2
    used = [it for it in local if it.template_id in translated]
    assert used  # the translated-placeholder rows are drawn for some questions
    for it in local:
        assert ann[it.question_id]["question"] in it.prompt
    for it in used:
        template = translated[it.template_id]
        marker = "{س}" if "{س}" in template else "{ف}"
        assert it.prompt == template.replace(marker, ann[it.question_id]["question"])
    broken = tmp_path / "blend"
    for sub in ("annotations", "questions", "prompts"):
        (broken / sub).mkdir(parents=True)
    for name in ("annotations/Algeria_data.json", "questions/Algeria_questions.csv"):
        (broken / name).write_bytes((BLEND / name).read_bytes())
    rows = (BLEND / "prompts" / "Algeria_prompts.csv").read_text(encoding="utf-8").replace("{س}", "(q)")
    (broken / "prompts" / "Algeria_prompts.csv").write_text(rows, encoding="utf-8")
    with pytest.raises(ValueError, match=r"Algeria_prompts\.csv, row 7: field 'Translation'"):
        load_saq(broken, countries=["Algeria"])


def test_scoring_cases():
    assert normalise("  Ｆｒｕｉｔ, (fresh)! ") == "fruit fresh"
    assert score_answer("I think fruits.", ["fruit"], "en")  # lemma: fruits -> fruit
    assert score_answer("Comen galletas y zumo", ["galleta"], "es")  # galletas -> galleta
    assert not score_answer("ice cream", ["cream cheese"], "en")
    assert score_answer("It is cream cheese!", ["cream cheese"], "en")
    assert not score_answer("cheese and cream", ["cream cheese"], "en")  # order matters: contiguous sequence
    resp = "{'question':'What about fruit?','answer':['juice']}"
    assert answer_part(resp) == "['juice']}"
    assert not score_answer(resp, ["fruit"], "en") and score_answer(resp, ["juice"], "en")
    assert score_answer("答案是饺子。", ["饺子"], "zh") and not score_answer("面条", ["饺子"], "zh")
    assert score_answer("김치 입니다", ["김치"], "ko")  # no lemmatiser: normalised tokens


def tiny():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                         pad_token_id=0, bos_token_id=1, eos_token_id=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    return model


@torch.no_grad()
def greedy_reference(model, ids: list[int], n: int) -> list[int]:
    m = model.double()
    out = list(ids)
    for _ in range(n):
        nxt = int(m(torch.tensor([out])).logits[0, -1].argmax())
        out.append(nxt)
        if nxt == 2:
            break
    model.float()
    return out[len(ids):]


def test_generate_matches_stepwise_argmax_with_padding():
    model, tok = tiny(), byte_tokenizer()
    prompts = ["<|user|>hi\n<|assistant|>", "<|user|>a much longer prompt here\n<|assistant|>", "<|user|>x\n<|assistant|>"]
    got = generate(model, tok, prompts, max_new_tokens=6, batch_size=2, progress=False)
    for p, text in zip(prompts, got):
        ref = greedy_reference(model, tok(p, add_special_tokens=False)["input_ids"], 6)
        assert text == tok.decode(ref, skip_special_tokens=True)
    assert generate(model, tok, prompts, max_new_tokens=6, batch_size=3, progress=False) == got


@needs_shared_data
def test_evaluate_saq_conditions_and_rows():
    from culnig_ext.data.saq import SAQItem

    model, tok = tiny(), byte_tokenizer()
    items = load_saq(BLEND, countries=["Spain"], split="test", max_per_country=2)
    # one item whose gold answer is what the model will say, so that 'correct' is exercised
    probe = generate(model, tok, [tok.apply_chat_template([{"role": "user", "content": "probe"}], tokenize=False,
                                                          add_generation_prompt=True)], max_new_tokens=4,
                     progress=False)[0]
    word = normalise(probe).split()
    items = items + ([SAQItem("probe", "Spain", "es", "probe", (word[0],), "p", "Family", "inst-1")] if word else [])
    neurons = NeuronSet.from_pairs([("layers.0.mlp.gate_proj", i, 1.0) for i in range(48)], method="t")
    conds = [Condition("original", None), Condition("general", neurons), Condition("random0", NeuronSet.from_pairs(
        [("layers.1.mlp.gate_proj", 3, 0.0)], method="random"))]
    res = evaluate_saq(model, tok, items, conds, max_new_tokens=4, batch_size=2, progress=False)
    if word:
        assert res["original"].records[-1].correct
    rows = saq_rows(res, "general")
    names = [r.eval_set for r in rows]
    assert "BLEnD short answers: Spain (es)" in names and "BLEnD short answers: Spain (en)" in names
    es = rows[names.index("BLEnD short answers: Spain (es)")]
    es_recs = [r for r in res["original"].records if r.language == "es"]
    assert es.n_items == len(es_recs) and es.original == pytest.approx(sum(r.correct for r in es_recs) / len(es_recs))
    # inhibiting every gate neuron of layer 0 changes what the model says
    assert [r.response for r in res["general"].records] != [r.response for r in res["original"].records]
