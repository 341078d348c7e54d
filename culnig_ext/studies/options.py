"""Run options defined once: a config dataclass's fields (with ``option(...)`` metadata) are the CLI flags, the
config-file keys and the ``config.json`` a run writes.

``option(default, help, flag=None, choices=None, none=None)`` declares a field; ``add_arguments(parser, Config)`` adds
one flag per field (booleans as ``--x/--no-x``, ``int | None`` fields also take ``none``);
``build(Config, args, config_file)`` merges, in rising precedence, the dataclass defaults, a YAML or JSON config
file (``--config FILE``; the ``config.json`` of a run is one) and the flags given on the command line (the
namespace lists them in ``given_options``; every field also has its default there, as plain argparse would give
it). Every key and value is checked: an unknown key or a value of the wrong type is refused naming the file and the
key; the keys a class lists in ``RECORDS`` (what a run records beside its options, e.g. the format probe's
evidence) are skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Callable, Mapping

_META = "culnig_option"


def option(default: Any, help: str, *, flag: str | None = None, choices: tuple | None = None,
           none: str | None = None) -> Any:
    """A dataclass field that is also a command-line flag (``--name-with-dashes`` unless ``flag`` is given);
    ``none``: what None means, in words (the help shows ``(none = ...)``)."""
    return dataclasses.field(default=default, metadata={_META: {"help": help, "flag": flag, "choices": choices,
                                                                "none": none}})


def option_meta(f: dataclasses.Field) -> dict[str, Any] | None:
    """What ``option`` recorded for a field (help, flag, choices, none); None for a field declared without it."""
    return f.metadata.get(_META)


def _base(tp: Any) -> tuple[type, bool]:
    """``int | None`` -> (int, True); ``str`` -> (str, False)."""
    args = typing.get_args(tp)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _fields(cls) -> list[tuple[dataclasses.Field, type, bool]]:
    hints = typing.get_type_hints(cls)
    return [(f, *_base(hints[f.name])) for f in dataclasses.fields(cls)]


def option_fields(cls) -> list[tuple[dataclasses.Field, type, bool]]:
    """The fields of ``cls`` declared with ``option``, in order, each with its type and whether it takes None
    (``int | None`` -> ``int, True``)."""
    return [(f, kind, optional) for f, kind, optional in _fields(cls) if _META in f.metadata]


def flag_of(f: dataclasses.Field) -> str:
    meta = f.metadata.get(_META) or {}
    return meta.get("flag") or "--" + f.name.replace("_", "-")


def flag_for(cls, name: str) -> str:
    """The flag of ``cls``'s field ``name`` (``n_random`` -> ``--random``)."""
    return next(flag_of(f) for f in dataclasses.fields(cls) if f.name == name)


def _parse_value(kind: type, optional: bool, raw: str) -> Any:
    if optional and raw.lower() in ("none", ""):
        return None
    return kind(raw)


GIVEN = "given_options"  # the namespace attribute listing the fields set by a flag on the command line


def _recording(action_cls):
    """``action_cls`` that also records its field in ``namespace.given_options`` (flags given explicitly)."""

    class Recording(action_cls):
        def __call__(self, parser, namespace, values, option_string=None):
            super().__call__(parser, namespace, values, option_string)
            given = set(getattr(namespace, GIVEN, None) or ())
            given.add(self.dest)
            setattr(namespace, GIVEN, given)

    return Recording


_STORE = _recording(argparse._StoreAction)
_BOOL = _recording(argparse.BooleanOptionalAction)


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of ``cls`` (defaults: the field's); the fields set by a flag are listed in the namespace's
    ``given_options``, so that ``build`` lets exactly those override a config file."""
    defaults = cls()
    for f, kind, optional in _fields(cls):
        meta = f.metadata.get(_META) or {}
        default = getattr(defaults, f.name)
        none = f" (none = {meta['none']})" if meta.get("none") else ""
        help_text = f"{meta.get('help', '')}{none} (default: {default!r})".replace("%", "%%")
        flag = flag_of(f)
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=_BOOL, default=default, help=help_text)
            continue
        parser.add_argument(
            flag, dest=f.name, action=_STORE, default=default, choices=meta.get("choices"), help=help_text,
            metavar=flag.lstrip("-").replace("-", "_").upper() if not meta.get("choices") else None,
            type=lambda raw, kind=kind, optional=optional: _parse_value(kind, optional, raw),
        )


def _check_value(where: str, key: str, value: Any, kind: type, optional: bool, choices: tuple | None) -> Any:
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: {key}: null is not allowed (expected {kind.__name__})")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is str and optional and value == "":
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where}: {key}: expected {kind.__name__}{' or null' if optional else ''}, got "
                         f"{type(value).__name__} {value!r}")
    if choices and value not in choices:
        raise ValueError(f"{where}: {key}: {value!r} is not one of {list(choices)}")
    return value


def read_config_file(path: str | Path, cls) -> dict[str, Any]:
    """The options in a YAML (``.yaml``/``.yml``) or JSON file, checked against ``cls``'s fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f"line {mark.line + 1}: " if mark is not None else ""
            raise ValueError(f"{path}: {line}not valid YAML ({getattr(exc, 'problem', exc)})") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a mapping of option names to values, got {type(raw).__name__}")
    return check_options(raw, cls, str(path))


def check_options(raw: Mapping[str, Any], cls, where: str) -> dict[str, Any]:
    """``raw`` checked against ``cls``'s fields: unknown keys and wrong types are refused naming ``where``."""
    fields = {f.name: (f, kind, optional) for f, kind, optional in _fields(cls)}
    records = getattr(cls, "RECORDS", ())  # what a run records beside its options (config.json): not options
    raw = {k: v for k, v in raw.items() if k not in records}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; known: {', '.join(fields)}")
    out = {}
    for key, value in raw.items():
        f, kind, optional = fields[key]
        out[key] = _check_value(where, key, value, kind, optional, (f.metadata.get(_META) or {}).get("choices"))
    return out


def build(cls, args: argparse.Namespace, config_file: str | Path | None = None, *,
          preset: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
    """``cls`` from its defaults, then ``preset(explicit)`` (defaults chosen by the explicit options, e.g. the
    paper's protocol), then ``config_file``, then the flags present in ``args``."""
    values = read_config_file(config_file, cls) if config_file else {}
    names = set(getattr(args, GIVEN, None) or ())
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name in names}
    values.update(check_options(given, cls, "command line"))
    if preset is not None:
        values = {**preset(values), **values}
    return cls(**values)


def to_dict(config) -> dict[str, Any]:
    """The options as the JSON object a run writes (and ``--config`` reads back)."""
    return dataclasses.asdict(config)
