"""Options defined once (culnig_ext.studies.options): flags, config files (YAML/JSON) and their precedence, checked values."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import pytest

from culnig_ext.studies.options import add_arguments, build, option


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


def non_default_run_config():
    from culnig_ext.studies.pipeline import RunConfig

    return RunConfig(out="o", recipe="language", model="m", data="d", crc="c", crc_test="ct", general=None, format="cloze",
                     control="frame", normalize="prob", contrast_general=True, t_mlp=0.02, t_attn=0.004, r_mlp=0.03,
                     r_attn=0.05, t_specific=0.006, r_specific=0.02, z_min=1.0, n_random=5, kinship=False,
                     instance_view=False, max_test_items=None, batch_size=4, dtype="bfloat16", device="cpu", seed=7,
                     progress=False, checkpoint_activations=True, max_scoring_items=None, max_per_question=None,
                     n_parts=4, n_boot=2, device_map="auto", attn_implementation="eager", checkpoint=False,
                     checkpoint_every=3, finetune=True, finetune_end="top", finetune_budget=0.2,
                     finetune_by="density", finetune_task="t.jsonl", finetune_task_test="u.jsonl", finetune_lora=True,
                     finetune_epochs=2, finetune_lr=0.001, finetune_train_batch_size=3, finetune_grad_accum=2,
                     finetune_max_steps=5, finetune_max_train_items=8, protocol="paper", n_random_paper=3, saq="s",
                     saq_max_per_country=None, saq_max_new_tokens=9, format_probe_max=16, full=True,
                     kinship_groups=3, threads=2, deterministic=True)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_run_config_round_trips_through_a_config_file(tmp_path, suffix):
    """Every RunConfig field, changed from its default, survives config.json (as a run writes it) or YAML and
    culnig run's own parser; and every field is a flag of culnig run."""
    import dataclasses

    import yaml

    from culnig_ext.cli import main as cli
    from culnig_ext.studies.options import to_dict
    from culnig_ext.studies.pipeline import RunConfig

    cfg = non_default_run_config()
    assert all(getattr(cfg, f.name) != f.default for f in dataclasses.fields(RunConfig))
    path = tmp_path / f"config{suffix}"
    path.write_text(json.dumps(to_dict(cfg)) if suffix == ".json" else yaml.safe_dump(to_dict(cfg)))
    args = cli.build_parser().parse_args(["run", "--config", str(path)])
    assert build(RunConfig, args, args.config) == cfg
    # flags override the file, field by field
    args = cli.build_parser().parse_args(["run", "--config", str(path), "--random", "2", "--kinship", "--general", "g"])
    assert build(RunConfig, args, args.config) == dataclasses.replace(cfg, n_random=2, kinship=True, general="g")
    # the same options as flags give the same config
    argv = ["run", "--out", "o", "--recipe", "language", "--model", "m", "--data", "d", "--crc", "c", "--crc-test", "ct", "--general", "",
            "--format", "cloze", "--control", "frame", "--normalize", "prob", "--contrast-general", "--t-mlp", "0.02",
            "--t-attn", "0.004", "--r-mlp", "0.03", "--r-attn", "0.05", "--t-specific", "0.006", "--r-specific",
            "0.02", "--z-min", "1", "--random", "5", "--no-kinship", "--no-instance-view", "--max-test-items",
            "none", "--batch-size", "4", "--dtype", "bfloat16", "--device", "cpu", "--seed", "7", "--no-progress",
            "--checkpoint-activations", "--max-scoring-items", "none", "--max-per-question", "none", "--n-parts", "4",
            "--n-boot", "2", "--device-map", "auto", "--attn-implementation", "eager", "--no-checkpoint",
            "--checkpoint-every", "3", "--finetune", "--finetune-end", "top", "--finetune-budget", "0.2",
            "--finetune-by", "density", "--finetune-task", "t.jsonl", "--finetune-task-test", "u.jsonl",
            "--finetune-lora", "--finetune-epochs", "2", "--finetune-lr", "0.001", "--finetune-train-batch-size", "3",
            "--finetune-grad-accum", "2", "--finetune-max-steps", "5", "--finetune-max-train-items", "8",
            "--protocol", "paper", "--paper-random", "3", "--saq", "s", "--saq-max-per-country", "none",
            "--saq-max-new-tokens", "9", "--format-probe-max", "16", "--full", "--kinship-groups", "3", "--threads", "2",
            "--deterministic"]
    args = cli.build_parser().parse_args(argv)
    assert build(RunConfig, args) == cfg


def test_paper_protocol_preset_under_explicit_options(tmp_path):
    """--protocol paper (flag or config file) sets the paper's defaults; options given explicitly, in the file or as
    flags, win over them; without the protocol nothing changes."""
    from culnig_ext.cli import main as cli
    from culnig_ext.studies.pipeline import RunConfig, run_preset

    def run_cfg(*argv):
        args = cli.build_parser().parse_args(["run", *argv])
        return build(RunConfig, args, args.config, preset=run_preset)

    paper = run_cfg("--protocol", "paper")
    assert (paper.protocol, paper.crc, paper.crc_test, paper.format, paper.dtype, paper.n_random_paper,
            paper.max_per_question) == ("paper", "paper:countryrc", "paper:countryrc", "letter", "bfloat16", 10, 5)
    assert (paper.max_scoring_items, paper.max_test_items) == (None, None)  # the paper scores and tests everything
    assert paper.n_random == RunConfig().n_random and paper.data == RunConfig().data  # not part of the preset
    assert run_cfg("--protocol", "ours", "--full") == RunConfig(full=True)
    assert run_cfg("--dtype", "float32", "--protocol", "paper", "--paper-random", "0").dtype == "float32"
    assert run_cfg("--protocol", "paper", "--paper-random", "0").n_random_paper == 0
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"protocol": "paper", "dtype": "float16"}))
    from_file = run_cfg("--config", str(path))
    assert (from_file.dtype, from_file.crc, from_file.n_random_paper) == ("float16", "paper:countryrc", 10)
    assert run_cfg("--config", str(path), "--protocol", "ours").crc == RunConfig().crc


def test_the_full_preset_is_the_research_size_study(tmp_path):
    """--full gives today's research-size defaults (400 scoring / 300 test items, 10 random sets, kinship over every
    group, 10 parts and 5 resamples for stability), which a model that is not embedded gets without the flag; an
    embedded model gets the quick sizes unless --full is given, and explicit sizes win over either preset."""
    from culnig_ext.cli import main as cli
    from culnig_ext.studies.config import QUICK_PRESET, RunConfig, run_preset

    def run_cfg(*argv):
        args = cli.build_parser().parse_args(["run", *argv])
        return build(RunConfig, args, args.config, preset=run_preset)

    research = dict(max_scoring_items=400, max_test_items=300, n_random=10, kinship=True, kinship_groups=None,
                    n_parts=10, n_boot=5, max_per_question=1, instance_view=True)

    def sizes(cfg):
        return {k: getattr(cfg, k) for k in research}

    full = run_cfg("--full")
    assert sizes(full) == research and full.full is True and full.model == "smollm2"
    assert full == RunConfig(full=True)  # the preset changes nothing but the flag: the defaults are the research size
    hub = run_cfg("--model", "org/some-model")
    assert sizes(hub) == research and hub.full is True
    folder = run_cfg("--model", str(tmp_path))
    assert sizes(folder) == research and folder.full is True

    quick = run_cfg()
    assert quick.full is False and quick == RunConfig(**QUICK_PRESET)
    assert quick.max_scoring_items < 400 and quick.max_test_items < 300 and 0 < quick.n_random < 10
    assert quick.kinship and quick.kinship_groups is not None
    assert run_cfg("--no-full", "--model", "org/some-model").max_test_items == quick.max_test_items
    assert run_cfg("--max-test-items", "50").max_test_items == 50  # explicit wins over the quick preset
    assert run_cfg("--full", "--random", "2").n_random == 2  # and over the full one
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"full": True}))
    assert sizes(run_cfg("--config", str(path))) == research
