"""The project's own small data sets, shipped as package data in ``culnig_ext/data/builtin/``.

* ``cultural.jsonl``: 144 cultural multiple-choice items: 8 countries (BLEnD group names) x BLEnD's 6 topics x 3
  questions; each question names its country; distractors are other countries' answers to the same question.
* ``general.jsonl``: 64 non-cultural items (science, arithmetic, vocabulary, physical commonsense; group = subject),
  a general-ability contrast set.
* ``countryrc.json``: 30 CountryRC-style templates: ids 0-14 for neuron scoring, 15-29 for evaluation; templates
  10-14 and 25-29 name a decoy country.
"""
from __future__ import annotations

from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
CULTURAL_PATH = BUILTIN_DIR / "cultural.jsonl"
GENERAL_PATH = BUILTIN_DIR / "general.jsonl"
COUNTRYRC_PATH = BUILTIN_DIR / "countryrc.json"

#: Countries (BLEnD group names) of the builtin cultural set.
BUILTIN_CULTURAL_COUNTRIES: tuple[str, ...] = (
    "US", "UK", "South_Korea", "China", "Mexico", "Spain", "Iran", "Ethiopia",
)
#: Builtin CountryRC templates used for neuron scoring.
BUILTIN_COUNTRYRC_SCORING_IDS: tuple[str, ...] = tuple(str(i) for i in range(0, 15))
#: Builtin CountryRC templates held out for evaluation.
BUILTIN_COUNTRYRC_EVAL_IDS: tuple[str, ...] = tuple(str(i) for i in range(15, 30))
