"""Recipes from files and by name, their hash, and the two ways between a recipe and ``RunConfig``'s options.

``load_recipe(spec)``: ``spec`` a builtin name (``culture``, ``language``: ``builtin/<name>.yaml``, package data)
or a ``.yaml``/``.yml``/``.json`` file; relative paths inside a file are read relative to that file's folder.
``recipe_options(recipe)``: the ``culnig run`` options a recipe sets (its target source, control, first surface
set, first general evaluation set, thresholds, random baselines): the defaults a run with ``--recipe`` starts
from, below the study size and the options given explicitly. ``resolve(recipe, cfg)``: the recipe with those
options read back from a run's configuration (what was given explicitly wins). ``recipe_hash``: a short hash of a
resolved recipe; ``scoring_hash``: of the parts that decide what is scored (recorded in every score table, which
is reused only when it matches). No torch here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from culnig_ext.studies.recipes.schema import (
    SURFACE,
    TARGET,
    TRANSFORM,
    KindFractions,
    Recipe,
    RecipeError,
    Surface,
    parse_recipe,
)

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
BUILTIN = ("culture", "language")
DEFAULT = "culture"
TEMPLATE = BUILTIN_DIR / "template.yaml"
JOIN = " + "  # several target sets in one option: "a.jsonl + b.jsonl"


def recipe_path(spec: str) -> Path:
    """The file of a recipe: a builtin name's package file, else ``spec`` as a path (must exist)."""
    name = spec[:-5] if spec.endswith(".yaml") and not Path(spec).exists() else spec
    if name in BUILTIN:
        return BUILTIN_DIR / f"{name}.yaml"
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {spec!r}: no such file (builtin recipes: {', '.join(BUILTIN)})")
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise RecipeError(f"{path}: a recipe is a .yaml, .yml or .json file")
    return path


def read_raw(path: Path) -> Any:
    """The mapping in a YAML or JSON file; invalid syntax refused naming the file and line."""
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise RecipeError(f"{path}: {line}not valid YAML ({getattr(exc, 'problem', exc)})") from None


def _is_path(source: str) -> bool:
    """Whether a source names a local file (a suffix the loaders read, no ``prefix:``)."""
    return Path(source).suffix.lower() in (".jsonl", ".json", ".csv", ".tsv", ".parquet") and ":" not in source


def _relative(source: str, folder: Path, where: str, key: str) -> str:
    """A file source made relative to the recipe's folder; a file that is not there refused naming ``key``."""
    if not _is_path(source):
        return source
    path = Path(source) if Path(source).is_absolute() else folder / source
    if not path.is_file():
        raise RecipeError(f"{where}: {key}: missing set: no such file {path}")
    return str(path)


def _localize(recipe: Recipe, folder: Path, where: str) -> Recipe:
    """Every file the recipe names, read relative to ``folder`` and checked to exist."""
    target = dataclasses.replace(recipe.target, sets=tuple(
        _relative(s, folder, where, f"target.sets[{i}]") for i, s in enumerate(recipe.target.sets)))
    control = recipe.control
    if control.file is not None:
        control = dataclasses.replace(control, file=_relative(control.file, folder, where, "control.file"))
    surface = tuple(dataclasses.replace(
        s, scoring=_relative(s.scoring, folder, where, f"surface[{i}].scoring"),
        evaluation=None if s.evaluation is None else _relative(s.evaluation, folder, where, f"surface[{i}].evaluation"))
        for i, s in enumerate(recipe.surface))
    evaluation = tuple(dataclasses.replace(e, source=_relative(e.source, folder, where, f"evaluation[{i}].source"))
                       for i, e in enumerate(recipe.evaluation))
    return dataclasses.replace(recipe, target=target, control=control, surface=surface, evaluation=evaluation)


def load_recipe(spec: str) -> Recipe:
    """The checked recipe ``spec`` names (module docstring); ``RecipeError`` naming the file and the key."""
    path = recipe_path(spec)
    where = str(path)
    recipe = parse_recipe(read_raw(path), where)
    return _localize(recipe, path.parent, where)


def general_set(recipe: Recipe):
    """The evaluation set ``culnig run --general`` stands for: the first one tagged general with a plain item
    source (not ``target`` nor ``surface:``); None when there is none."""
    return next((e for e in recipe.evaluation if e.tag == "general" and e.source != TARGET
                 and not e.source.startswith(SURFACE)), None)


def recipe_options(recipe: Recipe) -> dict[str, Any]:
    """The ``RunConfig`` options a recipe sets (module docstring). A surface set's removal fraction for a kind it
    does not filter is 0; a recipe without a surface set gives ``crc: ''`` (no removal)."""
    first = recipe.surface[0] if recipe.surface else None
    general = general_set(recipe)
    out: dict[str, Any] = dict(
        data=JOIN.join(recipe.target.sets), control=recipe.control.as_option(),
        crc=first.scoring if first else "", crc_test=(first.evaluation or "") if first else "",
        general=general.source if general else None,
        t_mlp=recipe.thresholds.mlp, t_attn=recipe.thresholds.attn,
        r_mlp=first.top.mlp if first and "mlp" in first.kinds else 0.0,
        r_attn=first.top.attn if first and "attn" in first.kinds else 0.0,
        t_specific=recipe.specific.top, r_specific=(first.specific or 0.0) if first else 0.0,
        z_min=recipe.specific.z_min, n_random=recipe.random.n, n_random_paper=recipe.random.paper,
    )
    return out


def resolve(recipe: Recipe, cfg: Any) -> Recipe:
    """``recipe`` with the options of ``recipe_options`` taken from ``cfg`` (a ``RunConfig``): a run's options
    are the truth, the recipe supplied their defaults. The first surface set's kinds become those with a non-zero
    fraction when ``cfg`` changed them; an empty ``crc`` drops the first surface set; an empty ``general`` drops
    the general evaluation set."""
    target = dataclasses.replace(recipe.target, sets=tuple(s.strip() for s in cfg.data.split(JOIN)))
    control = recipe.control
    if cfg.control != control.as_option():
        kind, _, rest = cfg.control.partition(":")
        control = dataclasses.replace(control, kind=kind, transform=rest if kind == "transform" else None,
                                      file=rest if kind == "file" else None)
    surface = list(recipe.surface)
    if surface and not cfg.crc:
        surface = surface[1:]
    elif cfg.crc:
        base = surface[0] if surface else None
        top = dataclasses.replace(base.top, mlp=cfg.r_mlp, attn=cfg.r_attn) if base else None
        first = Surface(name="crc", label="CountryRC", scoring=cfg.crc, top=KindFractions(cfg.r_mlp, cfg.r_attn),
                        evaluation=cfg.crc_test or None, specific=cfg.r_specific) if base is None else \
            dataclasses.replace(base, scoring=cfg.crc, evaluation=cfg.crc_test or None, top=top,
                                specific=cfg.r_specific if (base.specific is not None or cfg.r_specific) else None,
                                kinds=base.kinds if (cfg.r_mlp, cfg.r_attn) == (base.top.mlp, base.top.attn)
                                else tuple(k for k in ("mlp", "attn") if getattr(top, k) > 0))
        surface = [first] + surface[1:]
    names = {s.name for s in surface}
    general = general_set(recipe)
    evaluation = []
    for e in recipe.evaluation:
        if e.source.startswith(SURFACE) and (e.source[len(SURFACE):] not in names or not _surface_eval(surface, e)):
            continue
        if general is not None and e is general:
            if not cfg.general:
                continue
            e = dataclasses.replace(e, source=cfg.general)
        evaluation.append(e)
    return dataclasses.replace(
        recipe, target=target, control=control, surface=tuple(surface), evaluation=tuple(evaluation),
        thresholds=dataclasses.replace(recipe.thresholds, mlp=cfg.t_mlp, attn=cfg.t_attn),
        specific=dataclasses.replace(recipe.specific, top=cfg.t_specific, z_min=cfg.z_min),
        random=dataclasses.replace(recipe.random, n=cfg.n_random, paper=cfg.n_random_paper))


def _surface_eval(surface: list, e) -> bool:
    s = next(s for s in surface if s.name == e.source[len(SURFACE):])
    return s.evaluation is not None


def recipe_sources(spec: str, **given: str | None) -> dict[str, Any]:
    """The item sources a study that takes ``data``/``crc``/``crc_test``/``general`` (``culnig sweep``) uses for
    the recipe ``spec``: the recipe's (``recipe_options``), each replaced by the value in ``given`` that is not
    None."""
    options = recipe_options(load_recipe(spec))
    out = {k: options[k] for k in ("data", "crc", "crc_test", "general")}
    out.update({k: v for k, v in given.items() if v is not None})
    return out


def _hash(data: Any) -> str:
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def recipe_hash(recipe: Recipe) -> str:
    """``sha256:<16 hex>`` of the whole resolved recipe (recorded in config.json and the report)."""
    return _hash(recipe.to_dict())


def scoring_hash(recipe: Recipe, role: str = "neur") -> str:
    """``sha256:<16 hex>`` of what decides the content of the score table ``role``: ``neur`` the target sets,
    split and group field; ``ctrl`` those and the control; a surface set's name its scoring source (and the
    target's, for a transform of it); anything else (the general-ability contrast) none of the recipe. Thresholds,
    evaluation sets and baselines never enter: changing them reuses every table. Recorded in each table's
    provenance (``recipe``), which is reused only when it matches."""
    data = recipe.to_dict()
    surface = recipe.surface_named(role)
    if role == "neur":
        part: dict[str, Any] = {"target": data["target"]}
    elif role == "ctrl":
        part = {"target": data["target"], "control": data["control"]}
    elif surface is not None:
        part = {"surface": surface.scoring}
        if uses_transform(surface.scoring):
            part["target"] = data["target"]
    else:
        part = {}
    return _hash({"role": role, **part})


def scoring_hashes(recipe: Recipe) -> dict[str, str]:
    """``scoring_hash`` of every table a run of ``recipe`` scores from it (``neur``, ``ctrl``, each surface set)."""
    return {role: scoring_hash(recipe, role) for role in ("neur", "ctrl", *(s.name for s in recipe.surface))}


def uses_transform(source: str) -> str | None:
    """The transform's name of a ``transform:NAME`` source, else None."""
    return source[len(TRANSFORM):] if source.startswith(TRANSFORM) else None


def template_text(name: str) -> str:
    """The commented template ``culnig recipe new NAME`` writes, named ``name``."""
    return TEMPLATE.read_text(encoding="utf-8").replace("name: my-study", f"name: {name}", 1)
