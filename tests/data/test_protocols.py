"""The paper's protocol (``culnig_ext.data.protocols``): the exact strings built for given items, pinned against
expectations written here from the paper's templates (ynklab/CULNIG prompts.py / dataset.py), with the paper's
seeded draws re-done here (md5 -> random.Random)."""
from __future__ import annotations

import csv
import hashlib
import json
import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, pipelines  # noqa: F401  (transformers import check)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from culnig_ext.data import encode, encode_choices, load_items, render
from culnig_ext.data.protocols import PaperItem

PAPER_NAMES = ["USA", "UK", "South Korea", "Algeria", "Indonesia", "Spain", "Iran", "Mexico", "Assam", "Greece",
               "Ethiopia", "Nigeria", "North Korea", "West Java", "China", "Azerbaijan"]

CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def byte_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>"] + [bytes_to_unicode()[b] for b in range(256)])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    if chat:
        tok.chat_template = CHAT
    return tok


def rng_for(key: str) -> random.Random:
    return random.Random(int(hashlib.md5(key.encode()).hexdigest()[:8], 16) % (2 ** 32))


CRC_V0 = ("Read the passage carefully and choose a single option from A, B, C, D to answer the question. "
          "Do not output any other text.\n\npassage: {passage}\nquestion: {question}\n"
          "A. {a}\nB. {b}\nC. {c}\nD. {d}\n")
CRC_V2 = ("From the information provided in the passage, choose the best answer to the question. You must select a "
          "single choice: 1, 2, 3, or 4, and do not include any other text.\n\npassage: {passage}\nquestion: "
          "{question}\n1. {a}\n2. {b}\n3. {c}\n4. {d}\n")
# The instruction text exactly as the paper formats it (its seed key), with {passage} etc. still in place.
CRC_V0_RAW = CRC_V0.replace("{a}", "{option_a}").replace("{b}", "{option_b}").replace("{c}", "{option_c}").replace(
    "{d}", "{option_d}")
CRC_V2_RAW = CRC_V2.replace("{a}", "{option_a}").replace("{b}", "{option_b}").replace("{c}", "{option_c}").replace(
    "{d}", "{option_d}")


@pytest.fixture
def crc_file(tmp_path):
    data = [
        {"id": "0", "context": "Emma travelled to {country} last year.", "question": "Which country did Emma visit?"},
        {"id": "1", "context": "Tom lives in {country}, not in {country_dummy}.", "question": "Where does Tom live?"},
        {"id": "2", "context": "Ana moved to {country}.", "question": "Where did Ana move?"},
        {"id": "3", "context": "Li works in {country}.", "question": "Where does Li work?"},
    ]
    path = tmp_path / "crc.json"
    path.write_text(json.dumps(data))
    return path, data


def expected_crc(rec, instruction_raw, template, country, letters):
    rng = rng_for(f"{rec['context']}_{rec['question']}_{instruction_raw}_{country}")
    options = rng.sample([c for c in PAPER_NAMES if c != country], 3) + [country]
    rng.shuffle(options)
    if "country_dummy" in rec["context"]:
        dummy = rng.choice([c for c in options if c != country])
        passage = rec["context"].replace("{country}", country).replace("{country_dummy}", dummy)
    else:
        passage = rec["context"].replace("{country}", country)
    text = template.format(passage=passage, question=rec["question"], a=options[0], b=options[1], c=options[2],
                           d=options[3])
    return text, letters[options.index(country)]


def test_countryrc_items_exact_strings_and_draws(crc_file):
    path, data = crc_file
    items = load_items(f"paper:countryrc:{path}", split="neur")
    # 8 countries x 4 variants x the first half of the templates (2 of 4)
    assert len(items) == 8 * 4 * 2
    assert {it.group for it in items} == {"China", "Indonesia", "Iran", "Mexico", "South_Korea", "Spain", "UK", "US"}
    by_id = {it.id: it for it in items}
    for rec in data[:2]:
        for country, group in (("USA", "US"), ("South Korea", "South_Korea")):
            it = by_id[f"paper-countryrc:{rec['id']}:{group}:v0"]
            text, label = expected_crc(rec, CRC_V0_RAW, CRC_V0, country, "ABCD")
            assert it.question == text
            assert it.labels[it.answer_idx] == label and it.choices[it.answer_idx] == country
            it2 = by_id[f"paper-countryrc:{rec['id']}:{group}:v2"]
            text2, label2 = expected_crc(rec, CRC_V2_RAW, CRC_V2, country, "1234")
            assert it2.question == text2 and it2.labels == ("1", "2", "3", "4")
            assert it2.labels[it2.answer_idx] == label2
    held = load_items(f"paper:countryrc:{path}", split="test")
    assert {it.question_id for it in held} == {"2", "3"}
    # the decoy names a distractor, never the target
    it = by_id["paper-countryrc:1:US:v1"]
    passage = it.question.split("passage: ")[1].split("\n")[0]
    dummy = passage.split("not in ")[1].rstrip(".")
    assert passage.startswith("Tom lives in USA,") and dummy != "USA" and dummy in it.choices


def test_countryrc_first_item_pinned_literal(crc_file):
    # One item written out in full (the draw for this key is fixed by md5): a regression pin on the whole string.
    path, data = crc_file
    it = {i.id: i for i in load_items(f"paper:countryrc:{path}")}["paper-countryrc:0:China:v0"]
    rng = rng_for(f"{data[0]['context']}_{data[0]['question']}_{CRC_V0_RAW}_China")
    opts = rng.sample([c for c in PAPER_NAMES if c != "China"], 3) + ["China"]
    rng.shuffle(opts)
    assert it.question == (
        "Read the passage carefully and choose a single option from A, B, C, D to answer the question. Do not output "
        "any other text.\n\npassage: Emma travelled to China last year.\nquestion: Which country did Emma visit?\n"
        f"A. {opts[0]}\nB. {opts[1]}\nC. {opts[2]}\nD. {opts[3]}\n")


def write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


NORMAD_V0 = ("You will be given a short story involving 2 or more characters about everyday situations. You will "
             "also be given a country of relevance. Read the story and determine if the character\u2019s behavior "
             "aligns with the social norms of that country.\nOnly consider the provided context and country. Do not "
             "include any outside assumptions. Respond **only** with the number 1, 2, or 3.\n\ncountry: {country}\n"
             "Story: {story}\nOptions: {options}\n")


@pytest.fixture
def normad_file(tmp_path):
    rows = []
    for i in range(8):
        rows.append({"ID": str(i), "Country": "india" if i < 4 else "united_states_of_america",
                     "Story": f"Story number {i}.", "Gold Label": ["yes", "no", "neutral", "yes"][i % 4]})
    return write_csv(tmp_path / "normad.csv", rows), rows


def test_normad_exact_strings_shuffle_and_halves(normad_file):
    path, rows = normad_file
    items = load_items(f"paper:normad:{path}")
    assert len(items) == 4 * 8
    it = {i.id: i for i in items}["paper-normad:5:v0"]
    rng = rng_for(f"5_{NORMAD_V0}")
    nums = [1, 2, 3]
    rng.shuffle(nums)
    meaning = {nums[0]: "yes", nums[1]: "no", nums[2]: "neutral"}
    options = f"1: {meaning[1]}, 2: {meaning[2]}, 3: {meaning[3]}"
    assert it.question == NORMAD_V0.format(country="united_states_of_america", story="Story number 5.", options=options)
    assert it.labels == ("1", "2", "3")
    assert it.labels[it.answer_idx] == str(nums[1])  # story 5 is 'no'
    assert it.group == "US"
    # halves per (country, label): india yes = ids 0, 3 -> neuron 0; no = 1 -> held-out; neutral = 2 -> held-out
    neur = {i.question_id for i in load_items(f"paper:normad:{path}", split="neur")}
    test = {i.question_id for i in load_items(f"paper:normad:{path}", split="test")}
    assert neur == {"0", "4"} and test == {"1", "2", "3", "5", "6", "7"}


CB_V1 = ("Select only one option from A, B, C, or D to answer the following multiple-choice question. Do not output "
         "anything else.\nQuestion: {question}\nA. {a}\nB. {b}\nC. {c}\nD. {d}")
CB_V1_RAW = CB_V1.replace("{a}", "{option_a}").replace("{b}", "{option_b}").replace("{c}", "{option_c}").replace(
    "{d}", "{option_d}")


def test_culturalbench_exact_strings_and_halves(tmp_path):
    rows = [{"data_idx": str(i), "question_idx": str(i), "prompt_question": f"Q{i}?", "prompt_option_a": f"a{i}",
             "prompt_option_b": f"b{i}", "prompt_option_c": f"c{i}", "prompt_option_d": f"d{i}",
             "answer": "C", "country": "Japan" if i < 3 else "United Kingdom"} for i in range(6)]
    path = write_csv(tmp_path / "cb.csv", rows)
    it = {i.id: i for i in load_items(f"paper:culturalbench:{path}")}["paper-culturalbench:4:v1"]
    opts = ["a4", "b4", "c4", "d4"]
    rng_for(f"4_{CB_V1_RAW}").shuffle(opts)
    assert it.question == CB_V1.format(question="Q4?", a=opts[0], b=opts[1], c=opts[2], d=opts[3])
    assert it.choices[it.answer_idx] == "c4" and it.labels[it.answer_idx] == "ABCD"[opts.index("c4")]
    assert it.group == "UK"
    assert {i.question_id for i in load_items(f"paper:culturalbench:{path}", split="neur")} == {"0", "3"}


def test_qnli_mrpc_numbered(tmp_path):
    q = write_csv(tmp_path / "qnli.csv", [{"idx": "7", "question": "Who?", "sentence": "Him.", "label": "1"}])
    items = load_items(f"paper:qnli:{q}")
    assert [i.variant for i in items] == [0, 1, 2, 3]
    assert items[3].question == ("Your task is to judge if the answer to the question can be found in the context.\n"
                                 "Question: Who?\nContext: Him.\nAnswer 0 for entailment, and 1 for not_entailment. "
                                 "Do not include any other text.")
    assert items[3].labels[items[3].answer_idx] == "1"
    m = write_csv(tmp_path / "mrpc.csv", [{"idx": "3", "sentence1": "A b.", "sentence2": "B a.", "label": "0"}])
    items = load_items(f"paper:mrpc:{m}")
    assert items[1].question == ("You are given two sentences. Judge whether they express the same meaning, even if "
                                 "the wording is different.\nSentence 1: A b.\nSentence 2: B a.\nAnswer with 1 if they "
                                 "are paraphrases, and 0 if they are not.\nPlease respond using only 0 or 1.")
    assert items[1].labels[items[1].answer_idx] == "0"
    with pytest.raises(ValueError, match="no neuron/held-out split"):
        load_items(f"paper:qnli:{q}", split="neur")


@pytest.fixture
def wvb_dir(tmp_path):
    root = tmp_path / "wvb"
    (root / "full").mkdir(parents=True)
    meta = {f"Q{i}": {"question": f"How important is thing {i}?", "answer_scale_min": 1, "answer_scale_max": 4}
            for i in range(1, 46)}
    (root / "question_metadata.json").write_text(json.dumps(meta))
    demo = ["D_INTERVIEW\tB_COUNTRY"] + [f"{k}\tGreat Britain" for k in range(12)] + [
        f"{k}\tChina" for k in range(12, 24)]
    (root / "full" / "full_demographic_qa.tsv").write_text("\n".join(demo) + "\n")
    lines = ["D_INTERVIEW\t" + "\t".join(meta)]
    for k in range(24):
        # Great Britain answers Q_i with (i % 4) + 1 mostly; China always 2: KL differs per question
        gb = k < 12
        vals = [str((i % 4) + 1 if gb and k % 3 else 2) for i in range(1, 46)]
        lines.append(f"{k}\t" + "\t".join(vals))
    (root / "full" / "full_value_qa.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_worldvaluesbench_system_prompts_majority_and_kl_halves(wvb_dir):
    items = load_items(f"paper:worldvaluesbench:{wvb_dir}")
    gb = [i for i in items if i.group == "UK" and i.question_id == "Q3" and i.variant == 1]
    assert len(gb) == 1
    it = gb[0]
    assert it.system == "You are a person from Great Britain."
    assert it.question == ("Question: How important is thing 3?\nYour answer should be a single digit between 1 and 4. "
                           "Do not add any other information.")
    # GB answers to Q3: 8 x 4 and 4 x 2 -> majority 4
    assert it.labels[it.answer_idx] == "4"
    v2 = [i for i in items if i.group == "UK" and i.question_id == "Q3" and i.variant == 2][0]
    assert v2.system == "Behave as if you are from Great Britain." and v2.question.startswith("Question: How")
    # KL split: 45 questions per country, the 40 most divergent are the neuron half
    neur = load_items(f"paper:worldvaluesbench:{wvb_dir}", split="neur")
    test = load_items(f"paper:worldvaluesbench:{wvb_dir}", split="test")
    assert len({(i.group, i.question_id) for i in neur}) == 80 and len({(i.group, i.question_id) for i in test}) == 10
    # GB: questions with i % 4 == 1 (answer 2 from everyone = same as China) diverge least from all countries
    gb_test = {i.question_id for i in test if i.group == "UK"}
    assert gb_test <= {f"Q{i}" for i in range(1, 46) if (i % 4) + 1 == 2}


def test_render_and_encode_with_chat_template_and_digit_labels(wvb_dir, crc_file):
    tok = byte_tokenizer()
    it = [i for i in load_items(f"paper:worldvaluesbench:{wvb_dir}") if i.variant == 0][0]
    text = render(it, tok)
    assert text == f"<|system|>{it.system}\n<|user|>{it.question}\n<|assistant|>"
    enc = encode_choices(it, tok)
    assert enc.letter_ids == tuple(ord(d) + 3 for d in "1234")  # byte tokens: id = byte + 3
    assert list(enc.prompt_ids) == [b + 3 for b in text.encode()]
    score = encode([it], tok)[0]
    assert score.target_ids == (ord(it.labels[it.answer_idx]) + 3,)
    # without a chat template: plain text with special tokens added (the paper's fallback)
    plain = byte_tokenizer(chat=False)
    path, _ = crc_file
    crc = load_items(f"paper:countryrc:{path}")[0]
    assert render(crc, plain) == crc.question
    with pytest.raises(ValueError, match="letter format only"):
        encode([crc], tok, format="cloze")


def test_paper_item_labels_validated():
    with pytest.raises(ValueError, match="labels"):
        PaperItem(id="x", group="g", question="q", choices=("a", "b"), answer_idx=0, labels=("1", "1"))
