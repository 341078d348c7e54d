"""What ``culnig recipe`` does: write the commented template, and check a recipe file into a short summary.
No torch here."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from culnig_ext._utils.atomic import atomic_write_text
from culnig_ext.studies.recipes.load import load_recipe, recipe_hash, recipe_path, scoring_hashes, template_text


def write_template(name: str, out: str | None = None) -> Path:
    """Write the commented template named ``name`` to ``out`` (default ``<name>.yaml``); refuses a bad name and
    an existing file."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ValueError(f"recipe name {name!r}: use letters, digits, '-' and '_' (starting with a letter or digit)")
    path = Path(out) if out else Path(f"{name}.yaml")
    if path.exists():
        raise ValueError(f"--out {path}: exists; not overwritten (choose another file or delete it)")
    return atomic_write_text(path, template_text(name))


def check_recipe_file(spec: str) -> dict[str, Any]:
    """Load and check the recipe ``spec`` (``load_recipe``: a ``RecipeError`` names the file and the key); a
    summary of what it states."""
    recipe = load_recipe(spec)
    lines = [f"[culnig] recipe {recipe_path(spec)}: ok ({recipe.name}, {recipe_hash(recipe)})",
             f"  target      {', '.join(recipe.target.sets)} (split {recipe.target.split}, groups: "
             f"{recipe.target.groups}, field {recipe.target.group_field})",
             f"  control     {recipe.control.as_option()}",
             f"  thresholds  MLP {recipe.thresholds.mlp:g}, attention {recipe.thresholds.attn:g}; specific top "
             f"{recipe.specific.top:g}, z >= {recipe.specific.z_min:g}"]
    for s in recipe.surface:
        lines.append(f"  surface     {s.name} ({s.label or s.name}): {s.scoring}, top {s.top.mlp:g}/{s.top.attn:g} of "
                     f"{'/'.join(s.kinds)}; specific {'-' if s.specific is None else f'{s.specific:g}'}")
    for e in recipe.evaluation:
        lines.append(f"  evaluation  {e.name} [{e.tag}]: {e.source}" + (f" (split {e.split})" if e.split != "all" else ""))
    lines.append(f"  random      {recipe.random.n} sets" + (f", {recipe.random.paper} pooled" if recipe.random.paper
                                                             else "") + ("; LAPE side by side" if recipe.compare_lape
                                                                         else ""))
    return {"message": "\n".join(lines), "recipe": recipe.to_dict(), "hash": recipe_hash(recipe),
            "scoring_hashes": scoring_hashes(recipe)}
