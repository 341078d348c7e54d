"""CountryRC: reading-comprehension items whose answer is the country named in a short passage.

A template file is a JSON list of ``{"id", "context", "question"}`` where ``context`` contains ``{country}`` and
optionally ``{country_dummy}`` (a decoy country also named in the passage). For each template and true country,
the item's options are the true country and ``n_options - 1`` other countries drawn from ``pool``; a decoy, when the
template has one, is one of those distractors (as in the reference). Question = filled context + "\\n" + question;
group = the true country's BLEnD name; options and passage use readable names (``display_name``).
Draws depend only on (seed, template id, country).
"""
from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Sequence

from culnig_ext._utils.textfile import utf8_errors
from culnig_ext.data.countries import BLEND_COUNTRIES, display_name, resolve_countries
from culnig_ext.data.schema import MCItem, SchemaError
from culnig_ext.data.seeding import stable_rng

#: The real CountryRC file (ynklab/CULNIG, data/CountryRC/data.json, 50 templates): the paper scores neurons on
#: templates 0-24 and evaluates on 25-49.
COUNTRYRC_SCORING_IDS: tuple[str, ...] = tuple(str(i) for i in range(0, 25))
COUNTRYRC_EVAL_IDS: tuple[str, ...] = tuple(str(i) for i in range(25, 50))

_ALLOWED_FIELDS = {"country", "country_dummy"}


@dataclass(frozen=True)
class Template:
    """One CountryRC template."""

    id: str
    context: str
    question: str

    @property
    def has_decoy(self) -> bool:
        """True if the passage names a decoy country (``{country_dummy}``)."""
        return "country_dummy" in _fields(self.context)


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def read_templates(path: str | Path) -> list[Template]:
    """Read and check a CountryRC template file.

    Raises:
        FileNotFoundError: if the file does not exist.
        SchemaError: naming the file, template (position and id) and field: missing/non-string fields, a context
            without ``{country}``, unknown placeholders, braces that do not parse, duplicate ids, no templates.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such CountryRC template file: {path}")
    try:
        with utf8_errors(path, SchemaError), open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{path}, line {exc.lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(raw, list) or not raw:
        raise SchemaError(f"{path}: expected a non-empty JSON list of templates")
    out: list[Template] = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(raw):
        where = f"{path}, template {i}"
        if not isinstance(rec, dict):
            raise SchemaError(f"{where}: expected an object, got {type(rec).__name__}")
        for key in ("id", "context", "question"):
            value = rec.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and key == "id":
                continue
            if not isinstance(value, str) or not value.strip():
                raise SchemaError(f"{where}: field {key!r}: missing or not a non-empty string")
        tid = str(rec["id"]).strip()
        where = f"{path}, template {i} (id {tid!r})"
        if tid in seen:
            raise SchemaError(f"{where}: field 'id': duplicate id (first at template {seen[tid]})")
        seen[tid] = i
        for key in ("context", "question"):
            try:
                names = _fields(rec[key])
            except ValueError as exc:
                raise SchemaError(f"{where}: field {key!r}: braces do not parse ({exc})") from exc
            unknown = names - _ALLOWED_FIELDS
            if unknown:
                raise SchemaError(f"{where}: field {key!r}: unknown placeholder(s) {sorted(unknown)}")
        if "country" not in _fields(rec["context"]):
            raise SchemaError(f"{where}: field 'context': has no {{country}} placeholder")
        out.append(Template(tid, rec["context"].strip(), rec["question"].strip()))
    return out


def select_templates(templates: Sequence[Template], ids: Collection[str | int] | None) -> list[Template]:
    """Templates whose id is in ``ids`` (compared as strings), in file order; all when ``ids`` is None.

    Raises:
        ValueError: if a requested id is not in the file.
    """
    if ids is None:
        return list(templates)
    wanted = {str(i) for i in ids}
    missing = wanted - {t.id for t in templates}
    if missing:
        raise ValueError(f"CountryRC template id(s) not found: {sorted(missing, key=lambda s: (len(s), s))}")
    return [t for t in templates if t.id in wanted]


def build_countryrc_items(
    templates: Sequence[Template],
    *,
    countries: Iterable[str] | None = None,
    pool: Iterable[str] | None = None,
    n_options: int = 4,
    seed: int = 0,
    prefix: str = "countryrc",
) -> list[MCItem]:
    """One item per (template, true country).

    Args:
        templates: the templates (already selected).
        countries: the true countries (groups); default the 16 BLEnD countries.
        pool: countries the distractors are drawn from; default the 16 BLEnD countries.
        n_options: options per item.
        seed: seed of the draws.
        prefix: item ids are ``<prefix>:<template id>:<country>``.

    Raises:
        ValueError: for unknown countries or a pool too small for ``n_options``.
    """
    targets = list(BLEND_COUNTRIES) if countries is None else resolve_countries(countries, known=BLEND_COUNTRIES)
    pool_list = list(BLEND_COUNTRIES) if pool is None else resolve_countries(pool, known=BLEND_COUNTRIES, what="pool")
    items: list[MCItem] = []
    for country in targets:
        others = [c for c in pool_list if c != country]
        if len(others) < n_options - 1:
            raise ValueError(f"pool has {len(others)} countries besides {country!r}; need {n_options - 1}")
        for t in templates:
            rng = stable_rng("countryrc", seed, t.id, country)
            distractors = rng.sample(others, n_options - 1)
            options = [country, *distractors]
            rng.shuffle(options)
            filled = {"country": display_name(country)}
            if t.has_decoy:
                filled["country_dummy"] = display_name(rng.choice(distractors))
            items.append(MCItem(
                id=f"{prefix}:{t.id}:{country}",
                group=country,
                question=t.context.format(**filled) + "\n" + t.question.format(**filled),
                choices=tuple(display_name(c) for c in options),
                answer_idx=options.index(country),
                question_id=t.id,
            ))
    return items


def load_countryrc(
    path: str | Path,
    *,
    ids: Collection[str | int] | None = None,
    countries: Iterable[str] | None = None,
    pool: Iterable[str] | None = None,
    n_options: int = 4,
    seed: int = 0,
    prefix: str = "countryrc",
) -> list[MCItem]:
    """Read a template file and build its items (see ``build_countryrc_items``); ``ids`` selects templates
    (e.g. ``COUNTRYRC_SCORING_IDS`` for the real file)."""
    templates = select_templates(read_templates(path), ids)
    return build_countryrc_items(templates, countries=countries, pool=pool, n_options=n_options, seed=seed, prefix=prefix)
