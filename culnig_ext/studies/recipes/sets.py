"""A resolved recipe's item sets, read and sampled before any model is loaded: the target's scoring and held-out
items, the control items a transform or a file makes, every surface set (scoring and evaluation items) and every
evaluation set with its tag. ``load_sets(cfg, recipe)`` is what ``pipeline.load_data`` calls; the stages take
what it returns and know nothing of recipes."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from culnig_ext.data import load_items
from culnig_ext.data.defaults import Sources
from culnig_ext.data.defaults import resolve as resolve_sources
from culnig_ext.data.schema import MCItem
from culnig_ext.data.splits import sample_items
from culnig_ext.data.transforms import control_from_file, transform_items
from culnig_ext.studies.recipes.load import JOIN, general_set, uses_transform
from culnig_ext.studies.recipes.schema import SURFACE, TARGET, Recipe, Surface


@dataclass
class SurfaceItems:
    """A surface set's items: ``spec`` from the recipe, ``items`` scored, ``test`` evaluated (may be empty)."""

    spec: Surface
    items: list[MCItem]
    test: list[MCItem] = field(default_factory=list)


@dataclass
class EvalItems:
    """An evaluation set: its name, items and tag (``target``: the neurons should matter; ``general``: not)."""

    name: str
    items: list[MCItem]
    tag: str


@dataclass
class StudySets:
    """Every item set of a study (module docstring); ``ctrl`` None: the control is a prompt variant of the
    scoring items (``empty``/``frame``); ``test_name``: the evaluation set the kinship matrix uses."""

    sources: Sources
    neur: list[MCItem]
    test: list[MCItem]
    test_name: str
    ctrl: list[MCItem] | None
    surfaces: list[SurfaceItems]
    eval_sets: list[EvalItems]
    general_contrast: list[MCItem]
    groups: list[str]


def _is_file(source: str) -> bool:
    return ":" not in source and Path(source).is_file()


def _sources(recipe: Recipe) -> Sources:
    first = recipe.surface[0] if recipe.surface else None
    sources = resolve_sources(recipe.target.sets[0], first.scoring if first else "",
                              (first.evaluation or "") if first else "")
    rest = [resolve_sources(s, "", "").data for s in recipe.target.sets[1:]]
    return Sources(JOIN.join([sources.data, *rest]), sources.crc, sources.crc_test, sources.note)


def _target(cfg, recipe: Recipe, sources: Sources) -> tuple[list[MCItem], list[MCItem]]:
    per_q = dict(max_per_question=cfg.max_per_question, group_field=recipe.target.group_field)
    sets = sources.data.split(JOIN)
    topic = recipe.target.split == "topic"
    neur = [it for s in sets for it in load_items(s, split="neur" if topic else "all", seed=cfg.seed, **per_q)]
    test = [it for s in sets for it in load_items(s, split="test", seed=cfg.seed, **per_q)] if topic else []
    return sample_items(neur, cfg.max_scoring_items, cfg.seed), sample_items(test, cfg.max_test_items, cfg.seed)


def _of_groups(source: str, groups: list[str], cfg, *, split: str = "all") -> list[MCItem]:
    """A set's items of the target's groups: a file's by their group as written, other sources by country."""
    if _is_file(source):
        return [it for it in load_items(source, seed=cfg.seed, split=split) if it.group in groups]
    return load_items(source, seed=cfg.seed, countries=groups, split=split)


def _surface(cfg, s: Surface, scoring: str, evaluation: str | None, neur: list[MCItem], groups: list[str]
             ) -> SurfaceItems:
    name = uses_transform(scoring)
    if name is not None:
        items = transform_items(neur, name, cfg.seed)
    elif cfg.protocol == "paper":  # the paper scores its 8 countries on the first half of the templates
        items = sample_items(load_items(scoring, seed=cfg.seed, split="neur" if scoring.startswith("paper:")
                                        else "all"), cfg.max_scoring_items, cfg.seed)
    else:
        items = sample_items(_of_groups(scoring, groups, cfg), cfg.max_scoring_items, cfg.seed)
    test: list[MCItem] = []
    if evaluation:
        loaded = load_items(evaluation, seed=cfg.seed) if cfg.protocol == "paper" else _of_groups(evaluation, groups, cfg)
        test = sample_items(loaded, cfg.max_test_items, cfg.seed)
    return SurfaceItems(s, items, test)


def _control(recipe: Recipe, neur: list[MCItem], cfg) -> list[MCItem] | None:
    c = recipe.control
    if c.kind == "transform":
        return transform_items(neur, c.transform, cfg.seed)
    if c.kind == "file":
        return control_from_file(neur, load_items(c.file, seed=cfg.seed, max_per_question=None,
                                                  group_field=recipe.target.group_field), c.file)
    return None


def _evaluation(cfg, recipe: Recipe, test: list[MCItem], surfaces: list[SurfaceItems]
                ) -> tuple[list[EvalItems], list[MCItem]]:
    general = general_set(recipe)
    out, contrast = [], []
    for e in recipe.evaluation:
        if e.source == TARGET:
            items = test
        elif e.source.startswith(SURFACE):
            items = next(s.test for s in surfaces if s.spec.name == e.source[len(SURFACE):])
        else:
            per_q = dict(max_per_question=cfg.max_per_question) if e.split == "test" else {}
            items = load_items(e.source, seed=cfg.seed, split=e.split, **per_q)
            if e is general and cfg.contrast_general:  # disjoint halves: never evaluate on the contrast items
                contrast, items = items[0::2], items[1::2]
            items = sample_items(items, cfg.max_test_items, cfg.seed)
        out.append(EvalItems(e.name, items, e.tag))
    return out, contrast


def load_sets(cfg, recipe: Recipe) -> StudySets:
    """Every set of the resolved ``recipe`` at ``cfg``'s sizes and seed (module docstring)."""
    sources = _sources(recipe)
    neur, test = _target(cfg, recipe, sources)
    groups = list(dict.fromkeys(it.group for it in neur))
    surfaces = []
    for i, s in enumerate(recipe.surface):
        scoring, evaluation = (sources.crc, sources.crc_test or None) if i == 0 else (
            resolve_sources("", s.scoring, "").crc, resolve_sources("", "", s.evaluation or "").crc_test or None)
        surfaces.append(_surface(cfg, s, scoring, evaluation, neur, groups))
    eval_sets, contrast = _evaluation(cfg, recipe, test, surfaces)
    target = next(e for e in eval_sets if e.tag == "target")
    held_out = next((e for e in eval_sets if e.items is test), target) if test else target
    return StudySets(sources, neur, held_out.items, held_out.name, _control(recipe, neur, cfg), surfaces, eval_sets,
                     contrast, groups)
