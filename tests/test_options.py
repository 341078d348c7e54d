"""Options defined once (culnig_ext.options): flags, config files (YAML/JSON) and their precedence, checked values."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import pytest

from culnig_ext.options import add_arguments, build, option


@dataclass
class Demo:
    model: str = option("smollm2", "the model")
    general: str | None = option("builtin:general", "a set ('' to skip)")
    fmt: str = option("auto", "format", flag="--format", choices=("letter", "cloze", "auto"))
    t_mlp: float = option(0.01, "fraction")
    n_random: int = option(3, "random sets", flag="--random")
    max_items: int | None = option(120, "cap")
    kinship: bool = option(True, "kinship matrix")


def parse(argv, config=None):
    parser = argparse.ArgumentParser()
    add_arguments(parser, Demo)
    return build(Demo, parser.parse_args(argv), config)


def test_defaults_and_flags():
    assert parse([]) == Demo()
    got = parse(["--model", "m", "--general", "", "--format", "cloze", "--t-mlp", "0.5", "--random", "7",
                 "--max-items", "none", "--no-kinship"])
    assert got == Demo("m", None, "cloze", 0.5, 7, None, False)
    with pytest.raises(SystemExit):
        parse(["--format", "words"])


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_then_flags(tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"model": "file-model", "t_mlp": 1, "max_items": None, "kinship": False}))
    else:
        path.write_text("model: file-model\nt_mlp: 1\nmax_items: null\nkinship: false\n")
    got = parse([], path)
    assert got == Demo(model="file-model", t_mlp=1.0, max_items=None, kinship=False)
    assert isinstance(got.t_mlp, float)
    # a flag given on the command line wins over the file
    assert parse(["--model", "cli-model", "--kinship"], path) == Demo("cli-model", t_mlp=1.0, max_items=None)


@pytest.mark.parametrize("content, message", [
    ('{"model": "m", "t_mpl": 0.1}', r"run.json: unknown option\(s\) \['t_mpl'\]; known: model, general"),
    ('{"random": 3}', r"unknown option\(s\) \['random'\]"),  # keys are field names, not flags
    ('{"n_random": "3"}', r"run.json: n_random: expected int, got str '3'"),
    ('{"n_random": true}', r"run.json: n_random: expected int, got bool"),
    ('{"model": null}', r"run.json: model: null is not allowed"),
    ('{"fmt": "words"}', r"run.json: fmt: 'words' is not one of \['letter', 'cloze', 'auto'\]"),
    ('["model"]', r"run.json: expected a mapping"),
    ('{"model": "m",\n "x": }', r"run.json: line 2: not valid JSON"),
])
def test_bad_config_files_are_refused_naming_file_and_key(tmp_path, content, message):
    path = tmp_path / "run.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        parse([], path)


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "run.yml"
    path.write_text("model: m\nt_mlp: [1, 2\nseed: 3\n")
    with pytest.raises(ValueError, match=r"run.yml: line \d+: not valid YAML"):
        parse([], path)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        parse([], tmp_path / "missing.yaml")
