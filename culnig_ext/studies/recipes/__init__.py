"""Contrast recipes: a study (target sets, control, surface filters, thresholds, evaluation sets, baselines) as a
YAML or JSON file (``schema``: the typed tree and its checks; ``load``: files, builtin names, hashes and the
mapping onto ``culnig run``'s options). No torch here."""
from culnig_ext.studies.recipes.load import (
    BUILTIN,
    DEFAULT,
    load_recipe,
    recipe_hash,
    recipe_options,
    resolve,
    scoring_hash,
    scoring_hashes,
    template_text,
)
from culnig_ext.studies.recipes.schema import Recipe, RecipeError, parse_recipe

__all__ = ["BUILTIN", "DEFAULT", "Recipe", "RecipeError", "load_recipe", "parse_recipe", "recipe_hash",
           "recipe_options", "resolve", "scoring_hash", "scoring_hashes", "template_text"]
