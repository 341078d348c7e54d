"""``load_items``: one entry point from a source string (as given on the command line) to a list of ``MCItem``."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, MutableMapping

from culnig_ext._utils.textfile import utf8_errors
from culnig_ext.data import builtin
from culnig_ext.data.blend import BLEND_HUB_ID, load_blend_mcq_file, load_blend_mcq_hub
from culnig_ext.data.blend_annotations import build_blend_items, is_blend_annotation_root
from culnig_ext.data.countries import canonical_country
from culnig_ext.data.countryrc import load_countryrc
from culnig_ext.data.evalsets import (
    COMMONSENSEQA_HUB,
    CULTURALBENCH_HUB,
    NORMAD_HUB,
    load_commonsenseqa,
    load_culturalbench,
    load_mrpc,
    load_normad,
    load_qnli,
    load_worldvaluesbench,
)
from culnig_ext.data.jsonl import is_canonical_table, read_item_file, read_jsonl
from culnig_ext.data.schema import MCItem, SchemaError
from culnig_ext.data.splits import Split, split_items
from culnig_ext.data.tabular import TABLE_SUFFIXES, iter_rows

ACCEPTED_SOURCES = (
    "builtin:cultural",
    "builtin:general",
    "builtin:countryrc (templates 0-14) / builtin:countryrc-test (templates 15-29)",
    "countryrc:PATH or countryrc:PATH@A-B (a CountryRC template file; @A-B selects template ids A..B)",
    "PATH.jsonl/.csv/.tsv/.parquet/.json (canonical items: id, group, question, choices, answer_idx[, topic, "
    "question_id]; CSV choices as a JSON list)",
    "language:DIR, language-en:DIR (BLEnD's questions in the local language / in English, grouped by language; "
    "DIR a BLEnD folder or auto)",
    "PATH.json/.jsonl/.csv/.parquet with an MCQID column (BLEnD multiple-choice questions)",
    "DIR with annotations/ and questions/ (BLEnD raw annotations)",
    f"{BLEND_HUB_ID} (BLEnD multiple-choice questions from the hub)",
    "culturalbench[:PATH], normad[:PATH], commonsenseqa[:PATH], qnli[:PATH], mrpc[:PATH] (hub or local file)",
    f"{CULTURALBENCH_HUB[0]}, {NORMAD_HUB[0]}, {COMMONSENSEQA_HUB[0]} (hub ids)",
    "worldvaluesbench:DIR (a local WorldValuesBench folder)",
    "paper:countryrc[:PATH], paper:normad:PATH, paper:culturalbench:PATH, paper:worldvaluesbench:DIR, paper:qnli:PATH, "
    "paper:mrpc:PATH, paper:commonsenseqa:PATH (the paper's prompts and variants; hub ids in place of PATH)",
)

# Evaluation sets without countries, and those with them.
_GENERAL_EVALSETS: dict[str, tuple[Callable[..., list[MCItem]], str]] = {
    "commonsenseqa": (load_commonsenseqa, COMMONSENSEQA_HUB[0]),
    "qnli": (load_qnli, "nyu-mll/glue"),
    "mrpc": (load_mrpc, "nyu-mll/glue"),
}
_CULTURAL_EVALSETS: dict[str, tuple[Callable[..., list[MCItem]], str]] = {
    "culturalbench": (load_culturalbench, CULTURALBENCH_HUB[0]),
    "normad": (load_normad, NORMAD_HUB[0]),
}
_HUB_IDS = {CULTURALBENCH_HUB[0]: "culturalbench", NORMAD_HUB[0]: "normad", COMMONSENSEQA_HUB[0]: "commonsenseqa"}


def _unknown(source: str, why: str = "") -> ValueError:
    lines = "\n  ".join(ACCEPTED_SOURCES)
    return ValueError(f"unknown item source {source!r}{f' ({why})' if why else ''}; accepted:\n  {lines}")


def _no_countries(source: str, countries: Any) -> None:
    if countries is not None:
        raise ValueError(f"source {source!r} has no countries; do not pass countries")


def _filter_countries(items: list[MCItem], countries: Iterable[str] | None, source: str) -> list[MCItem]:
    if countries is None:
        return items
    if isinstance(countries, str):
        raise TypeError(f"countries must be a list of names, not the string {countries!r}")
    present = list(dict.fromkeys(item.group for item in items))
    wanted = []
    for name in countries:
        group = canonical_country(name)
        if group not in present:
            raise ValueError(f"source {source!r} has no country {name!r}; it has: {', '.join(present)}")
        wanted.append(group)
    return [item for item in items if item.group in wanted]


def _filter_groups(items: list[MCItem], groups: Iterable[str] | None, source: str) -> list[MCItem]:
    """Keep the items of ``groups`` (compared as written: a file's groups need not be countries)."""
    if groups is None:
        return items
    wanted = list(groups)
    present = set(it.group for it in items)
    missing = [g for g in wanted if g not in present]
    if missing:
        raise ValueError(f"source {source!r} has no group(s) {missing}; it has: {', '.join(sorted(present))}")
    return [it for it in items if it.group in wanted]


def _language_items(root: str, english: bool, seed: int, max_per_question: int | None,
                    languages: Iterable[str] | None) -> list[MCItem]:
    from culnig_ext.data.defaults import find_blend_root
    from culnig_ext.data.languages import load_language_items

    if root == "auto":
        found = find_blend_root()
        if found is None:
            raise FileNotFoundError("language:auto: no BLEnD annotation folder found (set CULNIG_BLEND_DIR or give "
                                    "language:PATH)")
        root = str(found)
    if not is_blend_annotation_root(root):
        raise FileNotFoundError(f"language:{root}: not a BLEnD folder (needs annotations/ and questions/)")
    return load_language_items(root, english=english, seed=seed, max_per_question=max_per_question,
                               languages=languages)


def missing_columns(path: Path, group_field: str) -> str:
    """Which canonical columns the first row of a table lacks, in words."""
    from culnig_ext.data.jsonl import CANONICAL

    for row in iter_rows(path):
        missing = [c for c in (*CANONICAL, group_field) if c not in row.data]
        return f"{row.where}: field(s) {missing} missing"
    return "no rows"


def has_mcqid(path: Path) -> bool:
    """True if the first row of a table file has BLEnD's MCQID column."""
    if path.suffix.lower() == ".jsonl":
        with utf8_errors(path, SchemaError), open(path, encoding="utf-8-sig") as f:
            for line in f:
                if line.strip():
                    try:
                        first = json.loads(line)
                    except json.JSONDecodeError:
                        return False  # read_jsonl will name the line
                    return isinstance(first, dict) and "MCQID" in first
        return False
    for row in iter_rows(path):
        return "MCQID" in row.data
    return False


def _template_ids(spec: str, template_ids: Collection[str | int] | None, source: str) -> tuple[str, Collection[str | int] | None]:
    m = re.fullmatch(r"(.+)@(\d+)-(\d+)", spec)
    if m is None:
        return spec, template_ids
    if template_ids is not None:
        raise ValueError(f"source {source!r}: give template ids either as @A-B or as template_ids, not both")
    lo, hi = int(m.group(2)), int(m.group(3))
    if lo > hi:
        raise ValueError(f"source {source!r}: empty template range {lo}-{hi}")
    return m.group(1), [str(i) for i in range(lo, hi + 1)]


def _file_items(path: Path, source: str, split: Split, countries: Iterable[str] | None, max_per_question: int | None,
                questions_dir: str | Path | None, group_field: str) -> list[MCItem]:
    """The items of a table file: BLEnD multiple-choice (an MCQID column) or canonical items (any table format,
    the group in ``group_field``); anything else refused naming the columns it lacks."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise _unknown(source, f"unsupported file type {suffix!r}")
    if has_mcqid(path):
        if split != "all" and questions_dir is None:
            raise ValueError(f"split {split!r} of BLEnD multiple-choice file {source!r} needs topics: pass "
                             "questions_dir (BLEnD's questions/ folder)")
        return load_blend_mcq_file(path, questions_dir=questions_dir, countries=countries,
                                   max_per_question=max_per_question)
    if suffix == ".jsonl" and group_field == "group":
        return _filter_countries(read_jsonl(path), countries, source)
    if suffix == ".jsonl" or is_canonical_table(path, group_field):
        return _filter_groups(read_item_file(path, group_field), countries, source)
    raise SchemaError(f"{missing_columns(path, group_field)}; canonical items need the columns id, {group_field} "
                      "(the group), question, choices, answer_idx (BLEnD multiple-choice files have MCQID; for "
                      "evaluation sets use e.g. culturalbench:PATH)")


def load_items(
    source: str,
    *,
    split: Split = "all",
    seed: int = 0,
    countries: Iterable[str] | None = None,
    max_per_question: int | None = 5,
    questions_dir: str | Path | None = None,
    template_ids: Collection[str | int] | None = None,
    stats: MutableMapping[str, Any] | None = None,
    group_field: str = "group",
) -> list[MCItem]:
    """Load items from a source string (see ``ACCEPTED_SOURCES``).

    Args:
        source: e.g. ``"builtin:cultural"``, ``"countryrc:../shared/data/countryrc/data.json@0-24"``,
            ``"items.jsonl"``, ``"../shared/data/blend"``, ``"nayeon212/BLEnD"``, ``"culturalbench:cb.csv"``.
        split: ``"neur"``/``"test"`` keep BLEnD's scoring/held-out topics (items need topics); ``"all"`` keeps all.
            Every source is capped at ``max_per_question`` items per (group, question).
        seed: seed of the draws (BLEnD annotation distractors, CountryRC options).
        countries: keep only these groups (BLEnD or readable names); refused for sources without countries.
        max_per_question: cap per (group, question_id); None = no cap.
        questions_dir: BLEnD ``questions/`` folder giving topics to BLEnD multiple-choice files/hub rows.
        template_ids: CountryRC template ids for ``countryrc:PATH`` (or use ``@A-B``).
        stats: if given, filled with ``n_items`` and, for BLEnD annotations, ``skipped`` (counts per reason).
        group_field: the column holding the group in a canonical item file (refused for other sources).

    Raises:
        ValueError: for an unknown source (listing what is accepted) or an option that does not apply.
        FileNotFoundError, SchemaError: from the loaders, naming the file, line/row and field.
    """
    if not isinstance(source, str) or not source.strip():
        raise _unknown(repr(source), "empty")
    source = source.strip()
    skipped: dict[str, int] | None = None
    items: list[MCItem]
    prefix, _, rest = source.partition(":")
    path = Path(source)

    if group_field != "group" and not (path.is_file() and not has_mcqid(path)):
        raise ValueError(f"source {source!r}: a group field ({group_field!r}) applies to canonical item files only")
    if prefix == "paper":  # the paper's protocol: its own prompts, variants and neuron/held-out halves
        from culnig_ext.data.protocols import load_paper_items

        items = load_paper_items(source, split=split, countries=countries)
        if stats is not None:
            stats.update(source=source, n_items=len(items))
        return items
    if source == "builtin:cultural":
        items = _filter_countries(read_jsonl(builtin.CULTURAL_PATH), countries, source)
    elif source == "builtin:general":
        _no_countries(source, countries)
        items = read_jsonl(builtin.GENERAL_PATH)
    elif source in ("builtin:countryrc", "builtin:countryrc-test"):
        ids = builtin.BUILTIN_COUNTRYRC_SCORING_IDS if source == "builtin:countryrc" else builtin.BUILTIN_COUNTRYRC_EVAL_IDS
        prefix_id = "builtin-countryrc" if source == "builtin:countryrc" else "builtin-countryrc-test"
        items = load_countryrc(builtin.COUNTRYRC_PATH, ids=ids, countries=countries, seed=seed, prefix=prefix_id)
    elif source.startswith("builtin:"):
        raise _unknown(source, "no such builtin set")
    elif prefix == "countryrc" and rest:
        file, ids = _template_ids(rest, template_ids, source)
        items = load_countryrc(file, ids=ids, countries=countries, seed=seed)
    elif prefix in ("language", "language-en") and rest:
        items = _language_items(rest, prefix == "language-en", seed, max_per_question, countries)
    elif prefix == "worldvaluesbench" and rest:
        items = load_worldvaluesbench(rest, countries=countries)
    elif prefix in _GENERAL_EVALSETS:
        _no_countries(source, countries)
        loader, hub_id = _GENERAL_EVALSETS[prefix]
        items = loader(rest or hub_id)
    elif prefix in _CULTURAL_EVALSETS:
        loader, hub_id = _CULTURAL_EVALSETS[prefix]
        items = loader(rest or hub_id, countries=countries)
    elif source == BLEND_HUB_ID:
        if split != "all" and questions_dir is None:
            raise ValueError(f"split {split!r} of {source!r} needs topics: pass questions_dir (BLEnD's questions/ folder)")
        items = load_blend_mcq_hub(questions_dir=questions_dir, countries=countries, max_per_question=max_per_question)
    elif source in _HUB_IDS:
        name = _HUB_IDS[source]
        if name in _GENERAL_EVALSETS:
            _no_countries(source, countries)
            items = _GENERAL_EVALSETS[name][0](source)
        else:
            items = _CULTURAL_EVALSETS[name][0](source, countries=countries)
    elif path.is_dir():
        if not is_blend_annotation_root(path):
            raise _unknown(source, "a folder, but without annotations/ and questions/")
        build = build_blend_items(path, countries=countries, seed=seed, max_per_question=max_per_question)
        items, skipped = build.items, build.skip_counts()
    elif path.is_file():
        items = _file_items(path, source, split, countries, max_per_question, questions_dir, group_field)
    elif path.suffix.lower() in TABLE_SUFFIXES or ("/" in source and not re.fullmatch(r"[\w.-]+/[\w.-]+", source)):
        raise FileNotFoundError(f"item source {source!r}: no such file or folder")
    else:
        raise _unknown(source)

    items = split_items(items, split, max_per_question=max_per_question)
    if not items:
        raise SchemaError(f"source {source!r}: no items left for split {split!r}")
    if stats is not None:
        stats["source"] = source
        stats["n_items"] = len(items)
        if skipped is not None:
            stats["skipped"] = skipped
    return items
