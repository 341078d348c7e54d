"""A contrast recipe as typed data: what a study scores (target sets and their groups), how its control is made,
which surface sets filter the neurons, the thresholds, the specific-neuron grouping, the evaluation sets (tagged
``target`` or ``general``) and the random baselines.

``parse_recipe(raw, where)`` builds a ``Recipe`` from a mapping (a YAML or JSON file's content) and refuses, naming
``where`` (the file) and the dotted key (``surface[0].top.mlp``): an unknown key, a value of the wrong type, a
missing key or set, a threshold outside [0, 1], a choice not among those accepted, an evaluation set naming a
surface set that does not exist. No torch here: ``culnig recipe check`` and ``culnig run --recipe`` refuse a bad
recipe before any model is loaded. The fields are documented in docs/recipes.md.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

SPLITS = ("topic", "all")
CONTROL_KINDS = ("empty", "frame", "transform", "file")
TAGS = ("target", "general")
#: The named transforms (``culnig_ext.data.transforms.TRANSFORMS``, which cannot be imported here without torch;
#: tests/studies/test_recipes.py checks that the two agree).
TRANSFORMS = ("empty", "neutral", "shuffle")
KINDS = ("mlp", "attn")
TRANSFORM = "transform:"  # a source derived from the target's scoring items by a named transform
SURFACE = "surface:"  # an evaluation source: the named surface set's evaluation items
TARGET = "target"  # an evaluation source: the target sets' held-out items


class RecipeError(ValueError):
    """A bad recipe; the message names the file and the dotted key."""


@dataclass(frozen=True)
class Target:
    """The scoring items and their groups.

    Attributes:
        sets: item sources (``culnig_ext.data.load_items``), read and concatenated; ``auto`` as for ``culnig run``.
        split: ``topic``: the scoring half by topic (BLEnD's), the other half is the held-out ``target`` evaluation
            set; ``all``: every item scores (give the held-out items as an evaluation set of their own).
        group_field: the column of a file that holds the group (renamed to ``group`` on reading).
        groups: what a group is, in words (country, language, persona): the report's wording.
    """

    sets: tuple[str, ...]
    split: str = "topic"
    group_field: str = "group"
    groups: str = "group"


@dataclass(frozen=True)
class Control:
    """How the control items are made from the scoring items: ``empty`` (question removed, the paper's),
    ``frame`` (question replaced by a fixed English frame), ``transform`` (a named transform of
    ``culnig_ext.data.transforms``) or ``file`` (a file of items in the canonical schema)."""

    kind: str = "empty"
    transform: str | None = None
    file: str | None = None

    def as_option(self) -> str:
        """The control as ``culnig run --control`` takes it: ``empty``, ``frame``, ``transform:NAME``, ``file:PATH``."""
        if self.kind == "transform":
            return f"transform:{self.transform}"
        if self.kind == "file":
            return f"file:{self.file}"
        return self.kind


@dataclass(frozen=True)
class KindFractions:
    """A fraction per neuron kind: MLP gate neurons and attention q/k/v neurons."""

    mlp: float
    attn: float


@dataclass(frozen=True)
class Surface:
    """A surface set: neurons ranking in its top fraction are removed from the selected ones.

    Attributes:
        name: its key (score table ``scores/<name>.safetensors``; ``surface:<name>`` in the evaluation sets).
        label: its name in the report.
        scoring: an item source, or ``transform:NAME`` (the target's scoring items transformed).
        evaluation: an item source evaluated as ``surface:<name>``; null: none.
        top: the removal fraction per kind for the general neurons.
        kinds: the kinds of the general neurons it filters (a kind not listed keeps its neurons).
        specific: the removal fraction for the specific neurons (all kinds pooled); null: it does not filter them.
    """

    name: str
    scoring: str
    top: KindFractions
    label: str = ""
    evaluation: str | None = None
    kinds: tuple[str, ...] = KINDS
    specific: float | None = None


@dataclass(frozen=True)
class Specific:
    """The group-specific neurons: top fraction of all neurons per group, minimum z-score across the groups."""

    top: float = 0.003
    z_min: float = 0.5
    group_by: str = "group"


@dataclass(frozen=True)
class EvalSet:
    """An evaluation set: ``source`` an item source, ``target`` (the target's held-out items) or
    ``surface:<name>``; ``tag`` ``target`` (the neurons should matter here) or ``general`` (they should not);
    ``split`` of an item source: ``all``, or ``test`` (BLEnD's held-out topics, capped per question as the target)."""

    name: str
    source: str
    tag: str
    split: str = "all"


@dataclass(frozen=True)
class Random:
    """Random baselines: ``n`` sets with the same number of neurons per site; ``paper`` sets drawn the paper's way
    (uniform over all neurons). A run's study size (``QUICK_PRESET``) may lower ``n``."""

    n: int = 10
    paper: int = 0


@dataclass(frozen=True)
class Recipe:
    """A contrast study as data (module docstring); ``compare_lape``: also select with LAPE on the same items and
    report the two side by side."""

    name: str
    target: Target
    thresholds: KindFractions
    evaluation: tuple[EvalSet, ...]
    description: str = ""
    control: Control = field(default_factory=Control)
    surface: tuple[Surface, ...] = ()
    specific: Specific = field(default_factory=Specific)
    random: Random = field(default_factory=Random)
    compare_lape: bool = False

    def surface_named(self, name: str) -> Surface | None:
        """The surface set called ``name``, or None."""
        return next((s for s in self.surface if s.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (lists for tuples): what ``parse_recipe`` reads back to an equal recipe."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------- parsing
def _fail(where: str, key: str, message: str) -> RecipeError:
    return RecipeError(f"{where}: {key}: {message}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", float: "a number", int: "a whole number", bool: "true or false"}.get(tp, str(tp))


def _value(tp: Any, raw: Any, where: str, key: str) -> Any:
    """``raw`` as type ``tp`` (a dataclass, ``tuple[X, ...]``, ``X | None``, str, float, int, bool)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        if raw is None:
            return None
        return _value(next(a for a in args if a is not type(None)), raw, where, key)
    if raw is None:
        raise _fail(where, key, f"null is not allowed (expected {_type_name(tp)})")
    if dataclasses.is_dataclass(tp):
        return _build(tp, raw, where, key)
    if typing.get_origin(tp) is tuple:
        if isinstance(raw, str) and args[0] is str:
            raw = [raw]
        if not isinstance(raw, list):
            raise _fail(where, key, f"expected {_type_name(tp)}, got {type(raw).__name__} {raw!r}")
        return tuple(_value(args[0], v, where, f"{key}[{i}]") for i, v in enumerate(raw))
    if tp is float and isinstance(raw, int) and not isinstance(raw, bool):
        raw = float(raw)
    if not isinstance(raw, tp) or (tp in (int, float) and isinstance(raw, bool)):
        raise _fail(where, key, f"expected {_type_name(tp)}, got {type(raw).__name__} {raw!r}")
    return raw


def _build(cls, raw: Any, where: str, key: str):
    """A ``cls`` from the mapping ``raw``: unknown keys, missing keys and wrong types refused naming ``key``."""
    if not isinstance(raw, Mapping):
        raise _fail(where, key or "(top level)", f"expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{key}." if key else ""
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise _fail(where, prefix + str(unknown[0]), f"unknown key; known here: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _fail(where, prefix + name, "missing (required)")
            continue
        values[name] = _value(hints[name], raw[name], where, prefix + name)
    return cls(**values)


def _fraction(where: str, key: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise _fail(where, key, f"a threshold must be a fraction in [0, 1], got {value!r}")


def _choice(where: str, key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _fail(where, key, f"{value!r} is not one of {list(choices)}")


def _check_surfaces(recipe: Recipe, where: str) -> None:
    names: set[str] = set()
    for i, s in enumerate(recipe.surface):
        key = f"surface[{i}]"
        if not s.name.strip() or not s.name.replace("_", "").replace("-", "").isalnum():
            raise _fail(where, f"{key}.name", f"must be letters, digits, '-' or '_', got {s.name!r}")
        if s.name in names or s.name in ("neur", "ctrl", "neur_parts", "ctrl_parts", "general"):
            raise _fail(where, f"{key}.name", f"{s.name!r} is taken (by another surface set or a run's table)")
        names.add(s.name)
        _fraction(where, f"{key}.top.mlp", s.top.mlp)
        _fraction(where, f"{key}.top.attn", s.top.attn)
        _fraction(where, f"{key}.specific", s.specific)
        for j, kind in enumerate(s.kinds):
            _choice(where, f"{key}.kinds[{j}]", kind, KINDS)
        if s.scoring.startswith(TRANSFORM):
            _choice(where, f"{key}.scoring", s.scoring[len(TRANSFORM):], TRANSFORMS)
        if not s.scoring.strip():
            raise _fail(where, f"{key}.scoring", "missing set (an item source or transform:NAME)")


def _check_evaluation(recipe: Recipe, where: str) -> None:
    if not recipe.evaluation:
        raise _fail(where, "evaluation", "missing set: at least one evaluation set is needed")
    seen: set[str] = set()
    for i, e in enumerate(recipe.evaluation):
        key = f"evaluation[{i}]"
        _choice(where, f"{key}.tag", e.tag, TAGS)
        _choice(where, f"{key}.split", e.split, ("all", "test"))
        if e.name in seen:
            raise _fail(where, f"{key}.name", f"{e.name!r} is used twice")
        seen.add(e.name)
        if e.source == TARGET and recipe.target.split != "topic":
            raise _fail(where, f"{key}.source", "'target' needs target.split: topic (the held-out topics); with "
                                                "split: all give the held-out items as a source")
        if e.source.startswith(SURFACE):
            surface = recipe.surface_named(e.source[len(SURFACE):])
            if surface is None:
                raise _fail(where, f"{key}.source", f"missing set: no surface set named "
                                                    f"{e.source[len(SURFACE):]!r} (have {[s.name for s in recipe.surface]})")
            if surface.evaluation is None:
                raise _fail(where, f"{key}.source", f"missing set: surface {surface.name!r} has no evaluation source")
        if not e.source.strip():
            raise _fail(where, f"{key}.source", "missing set (an item source, 'target' or surface:NAME)")
    if not any(e.tag == "target" for e in recipe.evaluation):
        raise _fail(where, "evaluation", "missing set: no evaluation set is tagged target")


def check_recipe(recipe: Recipe, where: str) -> Recipe:
    """The checks across keys (thresholds in [0, 1], choices, sets that must exist); returns ``recipe``."""
    if not recipe.name.strip():
        raise _fail(where, "name", "must be a non-empty string")
    if not recipe.target.sets or not all(s.strip() for s in recipe.target.sets):
        raise _fail(where, "target.sets", "missing set: at least one non-empty item source is needed")
    _choice(where, "target.split", recipe.target.split, SPLITS)
    c = recipe.control
    _choice(where, "control.kind", c.kind, CONTROL_KINDS)
    for kind, name in (("transform", "transform"), ("file", "file")):
        if (c.kind == kind) != (getattr(c, name) is not None):
            raise _fail(where, f"control.{name}", f"give it exactly when control.kind is {kind!r}")
    if c.kind == "transform":
        _choice(where, "control.transform", c.transform, TRANSFORMS)
    _fraction(where, "thresholds.mlp", recipe.thresholds.mlp)
    _fraction(where, "thresholds.attn", recipe.thresholds.attn)
    _fraction(where, "specific.top", recipe.specific.top)
    if recipe.specific.group_by != "group":
        raise _fail(where, "specific.group_by", f"only 'group' (the target's group field) is supported, got "
                                                f"{recipe.specific.group_by!r}")
    if recipe.random.n < 0 or recipe.random.paper < 0:
        raise _fail(where, "random", f"counts must be >= 0, got n={recipe.random.n}, paper={recipe.random.paper}")
    _check_surfaces(recipe, where)
    _check_evaluation(recipe, where)
    return recipe


def parse_recipe(raw: Any, where: str) -> Recipe:
    """A checked ``Recipe`` from ``raw`` (a file's mapping); ``RecipeError`` naming ``where`` and the key."""
    return check_recipe(_build(Recipe, raw, where, ""), where)
