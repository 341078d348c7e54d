"""The paper's evaluation protocol (``--protocol paper``): its exact prompts, answer labels, option order, splits.

``ours`` (the default) puts every set into the BLEnD letter template of ``prompts.py``. ``paper`` reproduces the
public code of the paper (ynklab/CULNIG: ``prompts.py``, ``dataset.py``, ``eval/evaluate.py``) item for item:

* CountryRC: 8 target countries (China, Indonesia, Iran, Mexico, South Korea, Spain, UK, USA) x 4 instruction
  variants (two lettered A-D, two numbered 1-4) x templates; options are the target and 3 countries drawn from the
  other 15 BLEnD countries, under the paper's own names ('USA', 'Nigeria', ...), with ``random.Random(seed)`` where
  ``seed = int(md5(f"{context}_{question}_{instruction}_{country}")[:8], 16)``; a decoy ``{country_dummy}`` is a
  further ``rng.choice`` among the distractors. Neuron half: the first half of the template file, held-out: the rest.
* NormAd: 4 variants, options ``1``/``2``/``3`` mapped to yes/no/neutral by a shuffle seeded with
  ``md5(f"{ID}_{instruction}")``; split per (country, gold label): first half neuron, rest held-out.
* CulturalBench: 4 lettered variants, the 4 options shuffled with ``md5(f"{data_idx}_{instruction}")``; split per
  country: first half neuron, rest held-out.
* WorldValuesBench: 2 system prompts x 2 instructions, digit answers, gold = the country's most frequent answer
  (ties: the answer seen first); questions sorted by KL(country || all countries) descending, the top 40 per
  country are the neuron half, the rest held-out.
* QNLI, MRPC: 4 numbered variants each (answers ``0``/``1``); CommonsenseQA: 4 lettered variants (A-E).
* BLEnD: the paper uses the hub's own prompt, which is ``prompts.py``'s letter format, and the first 5
  multiple-choice questions per (country, question) (``load_items``' default cap).

Every (item, variant) becomes one ``PaperItem`` (an ``MCItem`` carrying its rendered user/system text and answer
labels); accuracy over them is the paper's average over variants (every variant has the same items). Prompts go
through the tokenizer's chat template (system turn where the paper has one, generation prompt, ``enable_thinking``
off) and the model's next token is the answer label. Source strings: ``paper:countryrc[:PATH]`` (default: the
builtin template file), ``paper:normad:PATH``, ``paper:culturalbench:PATH``, ``paper:worldvaluesbench:DIR``,
``paper:qnli:PATH``, ``paper:mrpc:PATH``, ``paper:commonsenseqa:PATH`` (a hub id instead of PATH loads from the
hub); ``split``: ``neur`` / ``test`` / ``all`` as above.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from culnig_ext._utils.textfile import utf8_errors
from culnig_ext.data.countries import canonical_country
from culnig_ext.data.schema import MCItem, SchemaError

PROTOCOLS = ("ours", "paper")

# --------------------------------------------------------------------------------------------- the paper's text
# Prompt templates as published with the paper (ynklab/CULNIG, prompts.py, MIT); the exact text matters because the
# option draws are seeded by it.
WORLDVALUESBENCH_SYSTEM = (
    "You are a person from {country}.",
    "Behave as if you are from {country}.",
)
WORLDVALUESBENCH_PROMPTS = (
    "Question: {question}\nPlease respond with a single digit only from {min_option} to {max_option}. Do not include any other text.",
    "Question: {question}\nYour answer should be a single digit between {min_option} and {max_option}. Do not add any other information.",
)
_NORMAD_TAIL = "\n\ncountry: {country}\nStory: {story}\nOptions: {options}\n"
NORMAD_PROMPTS = (
    "You will be given a short story involving 2 or more characters about everyday situations. You will also be given a country of relevance. Read the story and determine if the character\u2019s behavior aligns with the social norms of that country.\nOnly consider the provided context and country. Do not include any outside assumptions. Respond **only** with the number 1, 2, or 3." + _NORMAD_TAIL,
    "Read a short story describing everyday events with at least two characters. You'll also receive a country. Your task is to judge whether the character\u2019s actions are in line with the cultural expectations of that country.\nUse only the given story and cultural context; do not bring in any outside knowledge. Answer strictly with the number 1, 2, or 3." + _NORMAD_TAIL,
    "A short scenario featuring multiple characters will be provided, along with the cultural background of a specific country. Your role is to determine how well the behavior shown fits that country's social norms.\nDo not make inferences beyond the given content. Only respond with 1, 2, or 3." + _NORMAD_TAIL,
    "Given a short daily-life story involving multiple characters, along with the country, assess whether the behavior depicted fits within the social norms of that culture.\nStick strictly to the given material without adding outside reasoning. Answer with just 1, 2, or 3." + _NORMAD_TAIL,
)
_ABCD = "\nQuestion: {question}\nA. {option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}"
CULTURALBENCH_PROMPTS = (
    "To answer the following multiple-choice question, you should choose one option only among A,B,C,D. Do not output any other things." + _ABCD,
    "Select only one option from A, B, C, or D to answer the following multiple-choice question. Do not output anything else." + _ABCD,
    "Choose one answer among A, B, C, and D for the question below. Do not include any explanation or extra content." + _ABCD,
    "You must answer the following question by selecting a single choice from A, B, C, or D. Do not write anything else." + _ABCD,
)
_CRC_BODY = "\n\npassage: {passage}\nquestion: {question}\n"
_CRC_LETTERS = "A. {option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}\n"
_CRC_DIGITS = "1. {option_a}\n2. {option_b}\n3. {option_c}\n4. {option_d}\n"
COUNTRYRC_PROMPTS = (
    "Read the passage carefully and choose a single option from A, B, C, D to answer the question. Do not output any other text." + _CRC_BODY + _CRC_LETTERS,
    "Read the following passage and question. Then, pick the most suitable answer from the four options. Only return the letter of your choice (A, B, C, or D)." + _CRC_BODY + _CRC_LETTERS,
    "From the information provided in the passage, choose the best answer to the question. You must select a single choice: 1, 2, 3, or 4, and do not include any other text." + _CRC_BODY + _CRC_DIGITS,
    "Determine the correct answer to the question based on the content of the passage. Respond with one of the following: 1, 2, 3, or 4. No additional text is needed." + _CRC_BODY + _CRC_DIGITS,
)
_ABCDE = "\nQuestion: {question}\nA. {option_a}\nB. {option_b}\nC. {option_c}\nD. {option_d}\nE. {option_e}"
COMMONSENSEQA_PROMPTS = (
    "To answer the following multiple-choice question, you should choose one option only among A,B,C,D,E. Do not output any other things." + _ABCDE,
    "Choose one answer among A, B, C, D, and E for the question below. Do not include any explanation or extra content." + _ABCDE,
    "Pick one option only \u2014 A, B, C, D, or E \u2014 as the answer to the question below. Do not provide any additional text." + _ABCDE,
    "Please choose one and only one of the following options (A, B, C, D, or E) to answer the question. Do not add anything else." + _ABCDE,
)
QNLI_PROMPTS = (
    "Determine whether the following context sentence contains enough information to answer the question.\nQuestion: {question}\nContext: {sentence}\nRespond with:\n0 if it does (entailment)\n1 if it does not (not_entailment)\nOnly answer with 0 or 1.",
    "Classify the relationship between the following question and context.\nQuestion: {question}\nContext: {sentence}\nLabel as:\n0: entailment \u2013 the question is supported by the context\n1: not_entailment \u2013 the question is not supported by the context\nPlease respond with either 0 or 1 only.",
    "Read the question and the context.\nQuestion: {question}\nContext: {sentence}\nIf the context provides enough evidence to answer the question, return 0 (entailment).\nIf the context is insufficient or irrelevant, return 1 (not_entailment).\nYour answer should be either 0 or 1.",
    "Your task is to judge if the answer to the question can be found in the context.\nQuestion: {question}\nContext: {sentence}\nAnswer 0 for entailment, and 1 for not_entailment. Do not include any other text.",
)
MRPC_PROMPTS = (
    "Determine whether the following two sentences are paraphrases of each other in meaning.\nSentence 1: {sentence1}\nSentence 2: {sentence2}\nRespond with:\n1 \u2013 if they are paraphrases\n0 \u2013 if they are not paraphrases\nOnly answer with 0 or 1.",
    "You are given two sentences. Judge whether they express the same meaning, even if the wording is different.\nSentence 1: {sentence1}\nSentence 2: {sentence2}\nAnswer with 1 if they are paraphrases, and 0 if they are not.\nPlease respond using only 0 or 1.",
    "A paraphrase means that two sentences convey the same information using different words or structure.\nSentence 1: {sentence1}\nSentence 2: {sentence2}\nDecide whether these sentences are paraphrases.\nReturn 1 for paraphrase, 0 for not paraphrase.\nYour answer must be either 0 or 1.",
    "Compare the following two sentences. If they convey the same meaning regardless of differences in wording, classify them as paraphrases.\nSentence 1: {sentence1}\nSentence 2: {sentence2}\nRespond with:\n1 \u2013 if they are semantically equivalent (paraphrase)\n0 \u2013 if they are not semantically equivalent\nOnly use 0 or 1 as your answer.",
)

#: The paper's names of the 16 BLEnD countries (its COUNTRY_TO_NAME['blend'] keys, in its order): CountryRC options.
PAPER_BLEND_NAMES: tuple[str, ...] = (
    "USA", "UK", "South Korea", "Algeria", "Indonesia", "Spain", "Iran", "Mexico",
    "Assam", "Greece", "Ethiopia", "Nigeria", "North Korea", "West Java", "China", "Azerbaijan",
)
#: CountryRC's target countries in the paper (eval/evaluate.py CRC_TARGET_COUNTRIES).
PAPER_CRC_COUNTRIES: tuple[str, ...] = ("China", "Indonesia", "Iran", "Mexico", "South Korea", "Spain", "UK", "USA")
#: WorldValuesBench's target countries in the paper (its names in the survey's B_COUNTRY column).
PAPER_WVB_COUNTRIES: tuple[str, ...] = (
    "China", "Indonesia", "Iran", "Mexico", "South Korea", "Great Britain", "United States",
)
WVB_NEURON_QUESTIONS = 40


# ----------------------------------------------------------------------------------------------------- items
@dataclass(frozen=True)
class PaperItem(MCItem):
    """One (item, instruction variant) of the paper's protocol.

    Attributes (beyond ``MCItem``'s; ``question`` holds the user turn):
        labels: the answer label of each option as the model should write it (``"A"``.., ``"1"``.., ``"0"``/``"1"``).
        system: the system turn (WorldValuesBench) or None.
        variant: the instruction variant's index (system x instruction for WorldValuesBench).
        benchmark: ``countryrc``, ``normad``, ``culturalbench``, ``worldvaluesbench``, ``qnli``, ``mrpc``,
            ``commonsenseqa``.
    """

    labels: tuple[str, ...] = ()
    system: str | None = None
    variant: int = 0
    benchmark: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.labels) != len(self.choices) or len(set(self.labels)) != len(self.labels):
            raise SchemaError(f"item {self.id!r}: field 'labels': need {len(self.choices)} distinct labels, "
                              f"got {self.labels!r}")


def problem_rng(key: str) -> random.Random:
    """The paper's per-problem generator: ``random.Random(int(md5(key)[:8], 16) % 2**32)``."""
    return random.Random(int(hashlib.md5(key.encode()).hexdigest()[:8], 16) % (2**32))


def _half(n: int, split: str) -> slice:
    if split == "neur":
        return slice(0, n // 2)
    if split == "test":
        return slice(n // 2, n)
    if split == "all":
        return slice(0, n)
    raise ValueError(f"unknown split {split!r}; accepted: neur, test, all")


def read_countryrc_file(path: str | Path) -> list[dict[str, str]]:
    """The template records ``{"id", "context", "question"}`` of a CountryRC file, unchanged (the paper seeds its
    draws with the raw text)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CountryRC file {path} not found")
    with utf8_errors(path, SchemaError), open(path, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(raw, list) or not raw:
        raise SchemaError(f"{path}: expected a non-empty JSON list of templates")
    for i, rec in enumerate(raw):
        for key in ("id", "context", "question"):
            if not isinstance(rec, dict) or not isinstance(rec.get(key), (str, int)) or str(rec.get(key)) == "":
                raise SchemaError(f"{path}, template {i}: field {key!r}: missing or empty")
        if "{country}" not in rec["context"]:
            raise SchemaError(f"{path}, template {i}: field 'context': has no {{country}} placeholder")
    return raw


def countryrc_items(
    templates: Sequence[dict[str, Any]], *, countries: Iterable[str] = PAPER_CRC_COUNTRIES, split: str = "all"
) -> list[PaperItem]:
    """The paper's CountryRC items: for each country, each of the 4 instructions, each template (in that order)."""
    chosen = list(templates)[_half(len(templates), split)]
    out: list[PaperItem] = []
    for country in countries:
        if country not in PAPER_BLEND_NAMES:
            raise ValueError(f"CountryRC country {country!r}: not one of the paper's names {PAPER_BLEND_NAMES}")
        for k, instruction in enumerate(COUNTRYRC_PROMPTS):
            for rec in chosen:
                context, question = rec["context"], rec["question"]
                rng = problem_rng(f"{context}_{question}_{instruction}_{country}")
                options = rng.sample([c for c in PAPER_BLEND_NAMES if c != country], 3)
                options.append(country)
                rng.shuffle(options)
                labels = ("1", "2", "3", "4") if "1. " in instruction else ("A", "B", "C", "D")
                if "country_dummy" in context:
                    dummy = rng.choice([c for c in options if c != country])
                    passage = context.format(country=country, country_dummy=dummy)
                else:
                    passage = context.format(country=country)
                text = instruction.format(passage=passage, question=question, option_a=options[0],
                                          option_b=options[1], option_c=options[2], option_d=options[3])
                out.append(PaperItem(
                    id=f"paper-countryrc:{rec['id']}:{canonical_country(country)}:v{k}",
                    group=canonical_country(country), question=text, choices=tuple(options),
                    answer_idx=options.index(country), question_id=str(rec["id"]),
                    labels=labels, variant=k, benchmark="countryrc"))
    return out


def _rows(source: str, hub) -> list:
    from culnig_ext.data.evalsets import load_rows  # the same reader as the 'ours' loaders (local file or hub)

    return load_rows(source, hub)


def _cell(row, column: str) -> str:
    if column not in row.data:
        raise SchemaError(f"{row.where}: missing field {column!r}")
    value = row.data[column]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    if value is None or text.strip() == "":
        raise SchemaError(f"{row.where}: field {column!r}: empty")
    return text


def normad_items(source: str, *, split: str = "all", countries: Iterable[str] | None = None) -> list[PaperItem]:
    """The paper's NormAd items (see the module docstring)."""
    from culnig_ext.data.evalsets import NORMAD_HUB

    rows = _rows(source, NORMAD_HUB)
    wanted = None if countries is None else {canonical_country(c) for c in countries}
    rows = [r for r in rows if wanted is None or canonical_country(_cell(r, "Country")) in wanted]
    for r in rows:
        if _cell(r, "Gold Label") not in ("yes", "no", "neutral"):
            raise SchemaError(f"{r.where}: field 'Gold Label': expected yes, no or neutral, got {r.data['Gold Label']!r}")
    if split != "all":
        keep = []
        for country in dict.fromkeys(_cell(r, "Country") for r in rows):
            for label in ("yes", "no", "neutral"):
                same = [r for r in rows if _cell(r, "Country") == country and _cell(r, "Gold Label") == label]
                keep += same[_half(len(same), split)]
        ids = {_cell(r, "ID") for r in keep}
        rows = [r for r in rows if _cell(r, "ID") in ids]
    out = []
    for k, instruction in enumerate(NORMAD_PROMPTS):
        for r in rows:
            rng = problem_rng(f"{_cell(r, 'ID')}_{instruction}")
            numbers = [1, 2, 3]
            rng.shuffle(numbers)
            meaning = dict(zip(numbers, ("yes", "no", "neutral")))
            options = ", ".join(f"{n}: {meaning[n]}" for n in sorted(meaning))
            text = instruction.format(country=_cell(r, "Country"), story=_cell(r, "Story"), options=options)
            gold = numbers[("yes", "no", "neutral").index(_cell(r, "Gold Label"))]
            out.append(PaperItem(
                id=f"paper-normad:{_cell(r, 'ID')}:v{k}", group=canonical_country(_cell(r, "Country")),
                question=text, choices=tuple(meaning[n] for n in (1, 2, 3)), answer_idx=gold - 1,
                question_id=_cell(r, "ID"), labels=("1", "2", "3"), variant=k, benchmark="normad"))
    return out


def culturalbench_items(source: str, *, split: str = "all", countries: Iterable[str] | None = None) -> list[PaperItem]:
    """The paper's CulturalBench-Easy items (see the module docstring)."""
    from culnig_ext.data.evalsets import CULTURALBENCH_HUB

    rows = _rows(source, CULTURALBENCH_HUB)
    wanted = None if countries is None else {canonical_country(c) for c in countries}
    rows = [r for r in rows if wanted is None or canonical_country(_cell(r, "country")) in wanted]
    if split != "all":
        keep = []
        for country in dict.fromkeys(_cell(r, "country") for r in rows):
            same = [r for r in rows if _cell(r, "country") == country]
            keep += same[_half(len(same), split)]
        ids = {_cell(r, "data_idx") for r in keep}
        rows = [r for r in rows if _cell(r, "data_idx") in ids]
    out = []
    for k, instruction in enumerate(CULTURALBENCH_PROMPTS):
        for r in rows:
            answer = _cell(r, "answer").strip().lower()
            if answer not in "abcd" or len(answer) != 1:
                raise SchemaError(f"{r.where}: field 'answer': expected A, B, C or D, got {r.data['answer']!r}")
            rng = problem_rng(f"{_cell(r, 'data_idx')}_{instruction}")
            options = [_cell(r, f"prompt_option_{x}") for x in "abcd"]
            gold_text = _cell(r, f"prompt_option_{answer}")
            rng.shuffle(options)
            text = instruction.format(question=_cell(r, "prompt_question"), option_a=options[0],
                                      option_b=options[1], option_c=options[2], option_d=options[3])
            out.append(PaperItem(
                id=f"paper-culturalbench:{_cell(r, 'data_idx')}:v{k}", group=canonical_country(_cell(r, "country")),
                question=text, choices=tuple(options), answer_idx=options.index(gold_text),
                question_id=_cell(r, "data_idx"), labels=("A", "B", "C", "D"), variant=k, benchmark="culturalbench"))
    return out


def _pair_items(source: str, hub, prompts, fields: tuple[str, str], name: str) -> list[PaperItem]:
    rows = _rows(source, hub)
    out = []
    for k, instruction in enumerate(prompts):
        for r in rows:
            label = _cell(r, "label")
            if label not in ("0", "1"):
                raise SchemaError(f"{r.where}: field 'label': expected 0 or 1, got {r.data['label']!r}")
            text = instruction.format(**{f: _cell(r, f) for f in fields})
            out.append(PaperItem(
                id=f"paper-{name}:{_cell(r, 'idx')}:v{k}", group=name, question=text, choices=("0", "1"),
                answer_idx=int(label), labels=("0", "1"), variant=k, benchmark=name))
    return out


def qnli_items(source: str) -> list[PaperItem]:
    """The paper's QNLI items: 4 numbered variants, answer ``0`` (entailment) or ``1``."""
    from culnig_ext.data.evalsets import QNLI_HUB

    return _pair_items(source, QNLI_HUB, QNLI_PROMPTS, ("question", "sentence"), "qnli")


def mrpc_items(source: str) -> list[PaperItem]:
    """The paper's MRPC items: 4 numbered variants, answer ``1`` (paraphrase) or ``0``."""
    from culnig_ext.data.evalsets import MRPC_HUB

    return _pair_items(source, MRPC_HUB, MRPC_PROMPTS, ("sentence1", "sentence2"), "mrpc")


def commonsenseqa_items(source: str) -> list[PaperItem]:
    """The paper's CommonsenseQA items: 4 lettered variants, options A-E in the data set's order."""
    from culnig_ext.data.evalsets import COMMONSENSEQA_HUB, csqa_choices

    out = []
    rows = _rows(source, COMMONSENSEQA_HUB)
    for k, instruction in enumerate(COMMONSENSEQA_PROMPTS):
        for r in rows:
            labels, texts = csqa_choices(r)
            if list(labels) != list("ABCDE"):
                raise SchemaError(f"{r.where}: field 'choices': expected labels A-E, got {labels}")
            key = _cell(r, "answerKey")
            text = instruction.format(question=_cell(r, "question"),
                                      **{f"option_{x.lower()}": t for x, t in zip(labels, texts)})
            out.append(PaperItem(
                id=f"paper-commonsenseqa:{_cell(r, 'id')}:v{k}", group="commonsenseqa", question=text,
                choices=tuple(texts), answer_idx=labels.index(key), labels=tuple(labels), variant=k,
                benchmark="commonsenseqa"))
    return out


def _kl(dist_all: Counter, dist_country: Counter) -> float:
    total_all, total_country = sum(dist_all.values()), sum(dist_country.values())
    kl = 0.0
    for k in set(dist_all) | set(dist_country):
        p_all, p_c = dist_all.get(k, 0) / total_all, dist_country.get(k, 0) / total_country
        if p_c > 0 and p_all > 0:
            kl += p_c * math.log(p_c / p_all)
    return kl


def worldvaluesbench_items(
    root: str | Path, *, split: str = "all", countries: Iterable[str] = PAPER_WVB_COUNTRIES, min_responses: int = 10
) -> list[PaperItem]:
    """The paper's WorldValuesBench items from a local WVB folder (``question_metadata.json``,
    ``full/full_demographic_qa.tsv``, ``full/full_value_qa.tsv``); ``countries`` in the survey's spelling."""
    from culnig_ext.data.tabular import iter_rows

    root = Path(root)
    meta_path, demo_path, value_path = (root / "question_metadata.json", root / "full" / "full_demographic_qa.tsv",
                                        root / "full" / "full_value_qa.tsv")
    for p in (meta_path, demo_path, value_path):
        if not p.is_file():
            raise FileNotFoundError(f"missing WorldValuesBench file {p}")
    with utf8_errors(meta_path, SchemaError), open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    questions = [f"Q{i}" for i in range(1, 260) if f"Q{i}" in meta]
    country_of = {}
    for row in iter_rows(demo_path):
        country_of[_cell(row, "D_INTERVIEW")] = _cell(row, "B_COUNTRY")
    dist_all: dict[str, Counter] = defaultdict(Counter)
    dist_country: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for row in iter_rows(value_path):
        country = country_of.get(_cell(row, "D_INTERVIEW"))
        for q in questions:
            cell = row.data.get(q)
            if cell is None or str(cell).strip() in ("", "nan"):
                continue
            try:
                answer = int(float(str(cell)))
            except ValueError:
                raise SchemaError(f"{row.where}: field {q!r}: expected a number, got {cell!r}") from None
            dist_all[q][answer] += 1
            if country is not None:
                dist_country[country][q][answer] += 1
    dist_all = {q: d for q, d in dist_all.items() if sum(d.values()) >= min_responses}
    data = []
    for country in countries:
        kept = [(q, d) for q, d in dist_country.get(country, {}).items() if sum(d.values()) >= min_responses]
        kept.sort(key=lambda qd: _kl(dist_all[qd[0]], qd[1]), reverse=True)
        if split == "neur":
            kept = kept[:WVB_NEURON_QUESTIONS]
        elif split == "test":
            kept = kept[WVB_NEURON_QUESTIONS:]
        elif split != "all":
            raise ValueError(f"unknown split {split!r}; accepted: neur, test, all")
        data += [(country, q, d) for q, d in kept]
    out = []
    for s, system in enumerate(WORLDVALUESBENCH_SYSTEM):
        for i, instruction in enumerate(WORLDVALUESBENCH_PROMPTS):
            k = s * len(WORLDVALUESBENCH_PROMPTS) + i
            for country, q, dist in data:
                lo, hi = int(meta[q]["answer_scale_min"]), int(meta[q]["answer_scale_max"])
                scale = list(range(lo, hi + 1))
                majority = max(dist, key=dist.get)  # ties: the answer seen first, as the paper's dict max
                if majority not in scale:
                    continue  # the majority is a missing-value code: no scale point is gold
                out.append(PaperItem(
                    id=f"paper-wvb:{canonical_country(country)}:{q}:v{k}", group=canonical_country(country),
                    question=instruction.format(question=meta[q]["question"], min_option=lo, max_option=hi),
                    choices=tuple(str(v) for v in scale), answer_idx=scale.index(majority), question_id=q,
                    values=tuple(float(v) for v in scale), labels=tuple(str(v) for v in scale),
                    system=system.format(country=country), variant=k, benchmark="worldvaluesbench"))
    if not out:
        raise SchemaError(f"{root}: no WorldValuesBench items for {list(countries)} (split {split})")
    return out


BENCHMARKS = ("countryrc", "normad", "culturalbench", "worldvaluesbench", "qnli", "mrpc", "commonsenseqa")


def load_paper_items(source: str, *, split: str = "all", countries: Iterable[str] | None = None) -> list[PaperItem]:
    """Items of a ``paper:NAME[:PATH]`` source (see the module docstring)."""
    from culnig_ext.data import builtin
    from culnig_ext.data.evalsets import COMMONSENSEQA_HUB, CULTURALBENCH_HUB, MRPC_HUB, NORMAD_HUB, QNLI_HUB

    _, _, rest = source.partition(":")
    name, _, path = rest.partition(":")
    if name not in BENCHMARKS:
        raise ValueError(f"source {source!r}: unknown benchmark {name!r}; accepted: paper:" + ", paper:".join(BENCHMARKS))
    if split not in ("neur", "test", "all"):
        raise ValueError(f"unknown split {split!r}; accepted: neur, test, all")
    if name in ("qnli", "mrpc", "commonsenseqa") and split != "all":
        raise ValueError(f"source {source!r}: the paper has no neuron/held-out split of {name}; use split 'all'")
    if name == "countryrc":
        names = PAPER_CRC_COUNTRIES if countries is None else [
            next((p for p in PAPER_BLEND_NAMES if canonical_country(p) == canonical_country(c)), c) for c in countries]
        return countryrc_items(read_countryrc_file(path or builtin.COUNTRYRC_PATH), countries=names, split=split)
    if name == "worldvaluesbench":
        if not path:
            raise ValueError(f"source {source!r}: give the WorldValuesBench folder, paper:worldvaluesbench:DIR")
        wvb = PAPER_WVB_COUNTRIES if countries is None else list(countries)
        return worldvaluesbench_items(path, split=split, countries=wvb)
    hubs = {"normad": NORMAD_HUB, "culturalbench": CULTURALBENCH_HUB, "qnli": QNLI_HUB, "mrpc": MRPC_HUB,
            "commonsenseqa": COMMONSENSEQA_HUB}
    src = path or hubs[name][0]
    if name == "normad":
        return normad_items(src, split=split, countries=countries)
    if name == "culturalbench":
        return culturalbench_items(src, split=split, countries=countries)
    if countries is not None:
        raise ValueError(f"source {source!r} has no countries; do not pass countries")
    return {"qnli": qnli_items, "mrpc": mrpc_items, "commonsenseqa": commonsenseqa_items}[name](src)


def render_paper(item: PaperItem, tokenizer: Any) -> tuple[str, bool]:
    """The paper's model input for ``item`` and whether to add special tokens when tokenising it: the chat
    template (system turn if any, generation prompt, thinking off) without special tokens; plain text with them
    when the tokenizer has no template (as the paper's fallback)."""
    messages = ([{"role": "system", "content": item.system}] if item.system else []) + [
        {"role": "user", "content": item.question}]
    if not getattr(tokenizer, "chat_template", None):
        text = "\n\n".join(m["content"] for m in messages)
        return text, True
    chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    return chat, False


def paper_random_note(n_random: int, seed: int) -> str:
    """One sentence on the paper's random baseline."""
    return (f"Paper's random baseline: {n_random} sets drawn uniformly from all MLP gate and attention q/k/v neurons "
            f"pooled (seeds {seed}..{seed + n_random - 1}), as many neurons as the inhibited set.")
