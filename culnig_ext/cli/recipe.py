"""``culnig recipe new NAME`` writes a commented recipe template; ``culnig recipe check FILE`` validates a recipe
(every key, type, threshold and set it names) without loading a model or torch (``culnig_ext.studies.recipes``)."""
from __future__ import annotations

import argparse

NAME = "recipe"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="contrast recipes: write a template (new) or validate one (check)",
                       description="A recipe states a study as data (docs/recipes.md): culnig run --recipe FILE.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    new = actions.add_parser("new", help="write a commented template NAME.yaml")
    new.add_argument("name", help="the recipe's name (letters, digits, '-', '_')")
    new.add_argument("--out", help="the file to write (default: NAME.yaml here); an existing file is kept")
    check = actions.add_parser("check", help="validate a recipe file (or a builtin name) without a model")
    check.add_argument("file", help="a .yaml/.yml/.json recipe, or culture / language")
    return p


def run(args) -> dict:
    from culnig_ext.studies.recipes.cli import check_recipe_file, write_template

    if args.action == "new":
        path = write_template(args.name, args.out)
        return {"message": f"[culnig] wrote the recipe template {path}\n  next: edit it, then culnig recipe check "
                           f"{path} and culnig run --recipe {path}", "path": str(path)}
    summary = check_recipe_file(args.file)
    return {"message": summary["message"], **{k: v for k, v in summary.items() if k != "message"}}
