"""The data side of culnig_ext: item schema, loaders, splits/controls, builtin sets, prompt rendering and encoding.

Flow: ``load_items(source)`` -> ``list[MCItem]`` -> ``split_items`` / ``make_control`` -> ``encode(items, tokenizer)``
-> ``list[ScoreItem]`` for the scorer; ``encode_choices`` for evaluation.
"""
from culnig_ext.data.blend import BLEND_HUB_ID, extract_question, load_blend_mcq_file, load_blend_mcq_hub, read_topics
from culnig_ext.data.blend_annotations import BlendBuild, Skip, build_blend_items, load_blend_annotations
from culnig_ext.data.builtin import (
    BUILTIN_COUNTRYRC_EVAL_IDS,
    BUILTIN_COUNTRYRC_SCORING_IDS,
    BUILTIN_CULTURAL_COUNTRIES,
    COUNTRYRC_PATH,
    CULTURAL_PATH,
    GENERAL_PATH,
)
from culnig_ext.data.countries import BLEND_COUNTRIES, DISPLAY_NAMES, canonical_country, display_name
from culnig_ext.data.countryrc import (
    COUNTRYRC_EVAL_IDS,
    COUNTRYRC_SCORING_IDS,
    Template,
    build_countryrc_items,
    load_countryrc,
    read_templates,
)
from culnig_ext.data.evalsets import (
    load_commonsenseqa,
    load_culturalbench,
    load_mrpc,
    load_normad,
    load_qnli,
    load_worldvaluesbench,
)
from culnig_ext.data.jsonl import read_jsonl, write_jsonl
from culnig_ext.data.prompts import (
    ANSWER_PREFIX,
    FRAME_QUESTION,
    LETTER_INSTRUCTION,
    ChoiceEncoding,
    TokenizerError,
    encode,
    encode_choices,
    render,
)
from culnig_ext.data.schema import MCItem, SchemaError, validate_items
from culnig_ext.data.sources import ACCEPTED_SOURCES, load_items
from culnig_ext.data.splits import BLEND_TOPICS, NEUR_TOPICS, TEST_TOPICS, cap_per_question, make_control, split_items

__all__ = [
    "ACCEPTED_SOURCES", "ANSWER_PREFIX", "BLEND_COUNTRIES", "BLEND_HUB_ID", "BLEND_TOPICS", "BUILTIN_COUNTRYRC_EVAL_IDS",
    "BUILTIN_COUNTRYRC_SCORING_IDS", "BUILTIN_CULTURAL_COUNTRIES", "BlendBuild", "COUNTRYRC_EVAL_IDS", "COUNTRYRC_PATH",
    "COUNTRYRC_SCORING_IDS", "CULTURAL_PATH", "ChoiceEncoding", "DISPLAY_NAMES", "FRAME_QUESTION", "GENERAL_PATH",
    "LETTER_INSTRUCTION", "MCItem", "NEUR_TOPICS", "SchemaError", "Skip", "TEST_TOPICS", "Template", "TokenizerError",
    "build_blend_items", "build_countryrc_items", "canonical_country", "cap_per_question", "display_name", "encode",
    "encode_choices", "extract_question", "load_blend_annotations", "load_blend_mcq_file", "load_blend_mcq_hub",
    "load_commonsenseqa", "load_countryrc", "load_culturalbench", "load_items", "load_mrpc", "load_normad",
    "load_qnli", "load_worldvaluesbench", "make_control", "read_jsonl", "read_templates", "read_topics", "render",
    "split_items", "validate_items", "write_jsonl",
]
