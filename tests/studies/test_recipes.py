"""Recipes as data (culnig_ext.studies.recipes): the builtin culture recipe states today's defaults, the schema
refuses bad recipes naming the file and the dotted key, files are read relative to the recipe, hashes follow what
they cover, and ``resolve`` reads a run's options back into the recipe."""
from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from culnig_ext.data.transforms import NEUTRAL_FRAME, TRANSFORMS, shuffle_question, transform_items
from culnig_ext.data.schema import MCItem
from culnig_ext.studies.config import RunConfig, recipe_config, run_preset
from culnig_ext.studies.recipes import RecipeError, load_recipe, recipe_hash, recipe_options, resolve, scoring_hash
from culnig_ext.studies.recipes.cli import check_recipe_file, write_template
from culnig_ext.studies.recipes.load import BUILTIN_DIR
from culnig_ext.studies.recipes.schema import TRANSFORMS as SCHEMA_TRANSFORMS


def culture_raw() -> dict:
    return yaml.safe_load((BUILTIN_DIR / "culture.yaml").read_text())


def write(tmp_path: Path, raw, name="r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(raw) if name.endswith(".json") else yaml.safe_dump(raw, sort_keys=False))
    return path


def test_culture_recipe_states_todays_defaults():
    # Written out by hand: RunConfig's defaults as they were before recipes existed.
    expected = dict(data="auto", control="empty", crc="auto", crc_test="auto", general="builtin:general",
                    t_mlp=0.01, t_attn=0.002, r_mlp=0.01, r_attn=0.01, t_specific=0.003, r_specific=0.01,
                    z_min=0.5, n_random=10, n_random_paper=0)
    assert recipe_options(load_recipe("culture")) == expected
    cfg = RunConfig()
    assert {k: getattr(cfg, k) for k in expected} == expected and cfg.recipe == "culture"
    assert resolve(load_recipe("culture"), cfg) == load_recipe("culture")
    assert [e.name for e in load_recipe("culture").evaluation] == ["Cultural test (BLEnD-style)", "CountryRC test",
                                                                     "General knowledge"]


def test_the_preset_puts_the_recipe_below_size_and_explicit_options(tmp_path):
    raw = culture_raw()
    raw["thresholds"] = {"mlp": 0.2, "attn": 0.1}
    raw["random"] = {"n": 7, "paper": 0}
    path = write(tmp_path, raw)
    quick = run_preset({"recipe": str(path)})
    assert quick["t_mlp"] == 0.2 and quick["t_attn"] == 0.1
    assert quick["n_random"] == 3  # the quick study's size wins over the recipe's 10 ...
    assert run_preset({"recipe": str(path), "full": True})["n_random"] == 7  # ... the research size keeps it
    cfg = recipe_config(str(path), t_mlp=0.3)
    assert (cfg.t_mlp, cfg.t_attn, cfg.n_random, cfg.recipe) == (0.3, 0.1, 7, str(path))


@pytest.mark.parametrize("edit, key, words", [
    (lambda r: r.update(colour="red"), "colour", "unknown key"),
    (lambda r: r["target"].update(grups="x"), "target.grups", "unknown key"),
    (lambda r: r["surface"][0]["top"].update(mlp="a lot"), "surface[0].top.mlp", "expected a number, got str"),
    (lambda r: r["random"].update(n=2.5), "random.n", "expected a whole number, got float"),
    (lambda r: r["evaluation"][0].update(tag=3), "evaluation[0].tag", "expected a string, got int"),
    (lambda r: r.pop("target"), "target", "missing (required)"),
    (lambda r: r["target"].update(sets=[]), "target.sets", "missing set"),
    (lambda r: r["evaluation"][1].update(source="surface:nope"), "evaluation[1].source", "missing set: no surface"),
    (lambda r: r.update(evaluation=[]), "evaluation", "missing set"),
    (lambda r: r["evaluation"][0].update(source="no_such_file.jsonl"), "evaluation[0].source",
     "missing set: no such file"),
    (lambda r: r["thresholds"].update(mlp=1.5), "thresholds.mlp", "must be a fraction in [0, 1], got 1.5"),
    (lambda r: r["surface"][0].update(specific=-0.1), "surface[0].specific", "fraction in [0, 1], got -0.1"),
    (lambda r: r["specific"].update(top=2), "specific.top", "fraction in [0, 1], got 2.0"),
    (lambda r: r["control"].update(kind="bogus"), "control.kind", "'bogus' is not one of"),
    (lambda r: r.update(control={"kind": "transform", "transform": "rot13"}), "control.transform",
     "'rot13' is not one of ['empty', 'neutral', 'shuffle']"),
    (lambda r: r["evaluation"][0].update(tag="both"), "evaluation[0].tag", "'both' is not one of"),
    (lambda r: r["surface"][0].update(kinds=["mlp", "ffn"]), "surface[0].kinds[1]", "'ffn' is not one of"),
])
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_bad_recipe_is_refused_naming_the_file_and_the_key(tmp_path, edit, key, words, suffix):
    raw = culture_raw()
    edit(raw)
    path = write(tmp_path, raw, "bad" + suffix)
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path))
    assert str(err.value).startswith(f"{path}: {key}: ") and words in str(err.value)


def test_syntax_errors_name_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ntarget: [unclosed\n")
    with pytest.raises(RecipeError, match=rf"^{path}: line \d+: not valid YAML"):
        load_recipe(str(path))
    path = tmp_path / "broken.json"
    path.write_text('{"name": "x",\n "target": }')
    with pytest.raises(RecipeError, match=rf"^{path}: line 2: not valid JSON"):
        load_recipe(str(path))
    with pytest.raises(FileNotFoundError, match="recipe 'nope.yaml': no such file"):
        load_recipe("nope.yaml")


def test_files_are_read_relative_to_the_recipe(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "items.jsonl").write_text("{}\n")
    raw = culture_raw()
    raw["target"]["sets"] = ["items.jsonl"]
    recipe = load_recipe(str(write(tmp_path / "sub", raw)))
    assert recipe.target.sets == (str(tmp_path / "sub" / "items.jsonl"),)


def test_hashes_follow_what_they_cover():
    base = load_recipe("culture")
    changed_threshold = replace(base, thresholds=replace(base.thresholds, mlp=0.05))
    changed_control = replace(base, control=replace(base.control, kind="frame"))
    assert recipe_hash(changed_threshold) != recipe_hash(base)
    for role in ("neur", "ctrl", "crc"):  # a threshold never forces a table to be scored again
        assert scoring_hash(changed_threshold, role) == scoring_hash(base, role)
    assert scoring_hash(changed_control, "ctrl") != scoring_hash(base, "ctrl")
    assert scoring_hash(changed_control, "neur") == scoring_hash(base, "neur")
    assert scoring_hash(changed_control, "crc") == scoring_hash(base, "crc")


def test_resolve_reads_the_run_options_back():
    language = load_recipe("language")
    cfg = recipe_config("language", t_mlp=0.05, r_mlp=0.0, general="")
    got = resolve(language, cfg)
    assert got.thresholds.mlp == 0.05 and got.surface[0].top.mlp == 0.0 and got.surface[0].kinds == ("attn",)
    assert [e.name for e in got.evaluation] == ["Held-out questions (local language)", "Held-out questions in English"]
    assert resolve(language, recipe_config("language")) == language
    no_surface = resolve(language, recipe_config("language", crc=""))
    assert no_surface.surface == ()


def test_the_schema_knows_the_data_transforms():
    assert SCHEMA_TRANSFORMS == tuple(sorted(TRANSFORMS))


def test_transforms_change_only_the_question():
    item = MCItem(id="a", group="Greek", question="ένα δύο τρία τέσσερα", choices=("x", "y"), answer_idx=1,
                  topic="Food", question_id="q")
    cjk = replace(item, id="b", question="在中国常见")
    neutral, shuffled, shuffled_cjk = *transform_items([item], "neutral"), *transform_items([item, cjk], "shuffle")
    assert neutral.question == NEUTRAL_FRAME and neutral.id == "a::neutral"
    assert sorted(shuffled.question.split()) == sorted(item.question.split())
    assert sorted(shuffled_cjk.question) == sorted("在中国常见")
    for t in (neutral, shuffled, shuffled_cjk):
        assert (t.group, t.choices, t.answer_idx, t.topic, t.question_id) == ("Greek", ("x", "y"), 1, "Food", "q")
    assert transform_items([item], "shuffle", seed=3) == transform_items([item], "shuffle", seed=3)
    assert transform_items([item], "shuffle", seed=3) != transform_items([item], "shuffle", seed=4)
    assert sorted(shuffle_question("word", random.Random(0))) == sorted("word")


def test_template_and_check(tmp_path):
    path = write_template("my-study", str(tmp_path / "t.yaml"))
    assert yaml.safe_load(path.read_text())["name"] == "my-study"
    with pytest.raises(RecipeError, match=r"t\.yaml: target\.sets\[0\]: missing set: no such file"):
        load_recipe(str(path))  # the template names files the user writes
    (tmp_path / "items.jsonl").write_text("")
    (tmp_path / "held_out.jsonl").write_text("")
    summary = check_recipe_file(str(path))
    assert summary["recipe"]["name"] == "my-study" and summary["hash"] == recipe_hash(load_recipe(str(path)))
    with pytest.raises(ValueError, match="exists; not overwritten"):
        write_template("my-study", str(path))
    with pytest.raises(ValueError, match="use letters, digits"):
        write_template("bad name", str(tmp_path / "u.yaml"))
