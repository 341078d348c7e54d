"""Where ``culnig run`` finds its data when told ``auto``: BLEnD rebuilt from the raw annotations and the real
CountryRC templates when a copy is on disk, else the builtin hand-written sets (the offline fallback).

Looked for, in order: ``$CULNIG_BLEND_DIR`` (a BLEnD folder with ``annotations/`` and ``questions/``), then
``data/blend`` and ``../shared/data/blend`` relative to the working directory and to the project folder. CountryRC:
``$CULNIG_COUNTRYRC`` or ``countryrc/data.json`` beside the BLEnD folder (templates 0-24 score, 25-49 evaluate, as
the reference code). BLEnD's multiple-choice hub set is not used here: it cannot give the topic split without the
``questions/`` folder, which the annotation folder has anyway.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from culnig_ext.data.blend_annotations import is_blend_annotation_root

AUTO = "auto"
_PROJECT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Sources:
    """Resolved item sources and a sentence for the report saying which data was used and why."""

    data: str
    crc: str
    crc_test: str
    note: str


def _candidates() -> list[Path]:
    out = []
    env = os.environ.get("CULNIG_BLEND_DIR")
    if env:
        out.append(Path(env))
    for base in (Path.cwd(), _PROJECT):
        out += [base / "data" / "blend", base.parent / "shared" / "data" / "blend"]
    return out


def find_blend_root() -> Path | None:
    """The first BLEnD annotation folder found (module docstring), or None."""
    for path in _candidates():
        if is_blend_annotation_root(path):
            return path.resolve()
    return None


def find_countryrc(blend_root: Path | None) -> Path | None:
    env = os.environ.get("CULNIG_COUNTRYRC")
    if env and Path(env).is_file():
        return Path(env).resolve()
    if blend_root is not None:
        path = blend_root.parent / "countryrc" / "data.json"
        if path.is_file():
            return path.resolve()
    return None


def resolve(data: str, crc: str, crc_test: str) -> Sources:
    """Replace every ``"auto"`` among the sources (module docstring); other values are kept as given."""
    root = find_blend_root() if AUTO in (data, crc, crc_test) else None
    notes = []
    if data == AUTO:
        if root is not None:
            data = str(root)
            notes.append(f"cultural items: BLEnD rebuilt from the raw annotations in {root}")
        else:
            data = "builtin:cultural"
            notes.append("cultural items: no BLEnD annotation folder found (set CULNIG_BLEND_DIR), so the builtin "
                         "hand-written set (144 items) is used: an offline fallback with little power")
    crc_file = find_countryrc(root) if AUTO in (crc, crc_test) else None
    if crc == AUTO:
        crc = f"countryrc:{crc_file}@0-24" if crc_file else "builtin:countryrc"
    if crc_test == AUTO:
        crc_test = f"countryrc:{crc_file}@25-49" if crc_file else "builtin:countryrc-test"
    if crc_file is not None:
        notes.append(f"CountryRC: the real templates in {crc_file} (0-24 scoring, 25-49 evaluation)")
    return Sources(data, crc, crc_test, "; ".join(notes))


NON_CULTURAL_PREFIXES = ("commonsenseqa", "qnli", "mrpc")


def is_non_cultural(source: str) -> bool:
    """Whether an item source is one of the non-cultural (general-ability) sets: ``builtin:general``,
    CommonsenseQA, GLUE QNLI/MRPC (by prefix or hub id)."""
    from culnig_ext.data.evalsets import COMMONSENSEQA_HUB

    source = source.strip()
    return (source == "builtin:general" or source.partition(":")[0] in NON_CULTURAL_PREFIXES
            or source in COMMONSENSEQA_HUB)
