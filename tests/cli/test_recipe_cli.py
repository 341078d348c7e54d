"""``culnig recipe new/check`` and ``culnig run --recipe`` / ``culnig sweep --recipe`` with a bad recipe: answered
in a fresh interpreter before torch or transformers is imported, naming the file and the key."""
from __future__ import annotations

import json

import pytest
import yaml

from culnig_ext.studies.recipes.load import BUILTIN_DIR
from tests.cli.test_fast_answers import culnig


def bad_recipe(tmp_path, edit) -> str:
    raw = yaml.safe_load((BUILTIN_DIR / "culture.yaml").read_text())
    edit(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("edit, key", [
    (lambda r: r.update(colour="red"), "colour: unknown key"),
    (lambda r: r["thresholds"].update(attn="high"), "thresholds.attn: expected a number, got str 'high'"),
    (lambda r: r["evaluation"][1].update(source="surface:gone"), "evaluation[1].source: missing set"),
    (lambda r: r["surface"][0]["top"].update(attn=3), "surface[0].top.attn: a threshold must be a fraction in [0, 1]"),
])
@pytest.mark.parametrize("command", [["recipe", "check", "{recipe}"], ["run", "--recipe", "{recipe}", "--out", "{tmp}/r"],
                                     ["sweep", "--recipe", "{recipe}", "--out", "{tmp}/s"]], ids=lambda c: c[0])
def test_a_bad_recipe_is_refused_before_torch(tmp_path, edit, key, command):
    recipe = bad_recipe(tmp_path, edit)
    argv = [a.format(recipe=recipe, tmp=tmp_path) for a in command]
    status, _, stderr, heavy = culnig(argv, tmp_path)
    assert status == 1 and heavy == []
    assert f"culnig {command[0]}: error: {recipe}: {key}" in stderr


def test_new_then_check_without_torch(tmp_path):
    target = tmp_path / "study.yaml"
    status, stdout, stderr, heavy = culnig(["recipe", "new", "study", "--out", str(target)], tmp_path)
    assert status == 0 and heavy == [] and f"wrote the recipe template {target}" in stdout
    assert yaml.safe_load(target.read_text())["name"] == "study"
    status, _, stderr, heavy = culnig(["recipe", "check", str(target)], tmp_path)
    assert status == 1 and heavy == [] and "target.sets[0]: missing set: no such file" in stderr
    status, stdout, _, heavy = culnig(["recipe", "--json", "check", "language"], tmp_path)
    answer = json.loads(stdout)
    assert status == 0 and heavy == [] and answer["ok"] and answer["recipe"]["name"] == "language"
    assert answer["recipe"]["control"] == {"kind": "transform", "transform": "neutral", "file": None}
    assert [e["tag"] for e in answer["recipe"]["evaluation"]] == ["target", "general", "general"]


def test_sweep_resolves_the_recipes_sets():
    from culnig_ext.studies.recipes.load import recipe_sources

    assert recipe_sources("culture") == {"data": "auto", "crc": "auto", "crc_test": "auto",
                                         "general": "builtin:general"}
    assert recipe_sources("language") == {"data": "language:auto", "crc": "transform:shuffle", "crc_test": "",
                                          "general": "builtin:general"}
    assert recipe_sources("language", data="x.jsonl")["data"] == "x.jsonl"
