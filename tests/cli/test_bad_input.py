"""The bad-input matrix: every ``culnig`` subcommand against every class of bad input.

Each row runs the command in-process with exactly one bad input and checks: exit status 1, exactly one line on
stderr (``culnig <command>: error: ...``) naming the place (file, line, field or option, as listed in the row), no
file or folder created or changed, and the model loader never called (it is replaced by one that fails the test):
the error comes before any model is loaded or item scored.

Adding a subcommand (``sweep``, ``finetune`` ...) is one line in ``COMMANDS``: its argv with slots such as
``{model}``, ``{items}``, ``{out_dir}``; every bad-input class that replaces one of its slots becomes a row.
"""
from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from culnig_ext.cli import main as cli
from culnig_ext.models import loading as models
from culnig_ext.selection.neurons import Neuron, NeuronSet
from culnig_ext.scoring.table import ScoreTable
from tests.studies.test_pipeline import WIDTHS, save_tiny_model


class ModelLoaded(AssertionError):
    """Raised by the stand-in model loader: the command got past its checks."""


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise ModelLoaded(f"load_model{args} was called")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(models, "load_tokenizer", refuse)  # culnig prompts loads only the tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("bad_input_model"))


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory) -> Path:
    """A real ``culnig plant`` folder (tiny model, one epoch): ``culnig validate``'s good input."""
    from culnig_ext.studies.ground_truth_config import PlantConfig
    from culnig_ext.studies.plant import plant
    from tests import plant_fixtures

    root = tmp_path_factory.mktemp("bad_input_planted")
    base = plant_fixtures.save_tiny_model(root / "base")
    return plant(PlantConfig(out=str(root / "planted"), model=str(base), epochs=1, **plant_fixtures.TINY)).out


# ------------------------------------------------------------------------------------------ the good inputs
ITEMS = [
    {"id": "a1", "group": "A", "question": "Which food is eaten here?", "choices": ["Rice", "Bread"], "answer_idx": 0},
    {"id": "a2", "group": "A", "question": "Which sport is played here?", "choices": ["Golf", "Polo"], "answer_idx": 1},
    {"id": "b1", "group": "B", "question": "Which dish is from here?", "choices": ["Soup", "Stew"], "answer_idx": 0},
    {"id": "b2", "group": "B", "question": "Which drink is common?", "choices": ["Tea", "Milk"], "answer_idx": 1},
]

RESULTS = {
    "format": "culnig-report/1", "title": "Hand-made run", "model": "tiny", "neuron_set": "culture-general",
    "n_neurons": 3, "alpha": 0.05,
    "rows": [{"eval_set": "S", "cultural": True, "n_items": 4, "original": 0.5, "inhibited": 0.25,
              "random": [0.5, 0.75], "p_value": 0.2, "metric": "accuracy"},
             {"eval_set": "T", "cultural": False, "n_items": 4, "original": 0.75, "inhibited": 0.5,
              "random": [0.5], "p_value": 0.3, "metric": "accuracy"}],
    "kinship": None, "layers": None, "notes": [], "metadata": {},
}


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def table(model: str = "tiny", widths: dict[str, int] = WIDTHS, seed: int = 0) -> ScoreTable:
    g = torch.Generator().manual_seed(seed)
    sums = {site: torch.rand(2, width, generator=g, dtype=torch.float64) for site, width in widths.items()}
    return ScoreTable(["A", "B"], [2, 2], sums, prob_sums=[1.0, 1.0], metadata={"model": model})


def neuron_set_json(entries: list[dict] | None = None) -> str:
    ns = NeuronSet([Neuron("layers.0.mlp.gate_proj", 3, 1.0), Neuron("layers.1.self_attn.k_proj", 5, 0.5)],
                   method="general", model="tiny")
    obj = ns.to_json()
    if entries is not None:
        obj["neurons"] = entries
    return json.dumps(obj, indent=1)


RECIPE = {"name": "r", "target": {"sets": ["ITEMS"], "split": "all"}, "thresholds": {"mlp": 0.1, "attn": 0.1},
          "evaluation": [{"name": "held out", "source": "ITEMS", "tag": "target"}]}


def recipe_file(i: "Inputs", name: str, edit) -> str:
    raw = json.loads(i.recipe.read_text())
    edit(raw)
    return write(i.root / "in" / name, json.dumps(raw).encode())


class Inputs:
    """The good inputs of every command, written into ``root``; slot name -> argv value."""

    def __init__(self, root: Path, model_dir: Path, planted_dir: Path) -> None:
        self.root = root
        (root / "in").mkdir()
        self.items = root / "in" / "items.jsonl"
        self.items.write_text(jsonl(ITEMS), encoding="utf-8")
        self.table = table().save(root / "in" / "neur.safetensors")
        self.ctrl = table(seed=1).save(root / "in" / "ctrl.safetensors")
        self.neurons = root / "in" / "set.json"
        self.neurons.write_text(neuron_set_json(), encoding="utf-8")
        self.run_dir = root / "in" / "run"
        self.run_dir.mkdir()
        (self.run_dir / "results.json").write_text(json.dumps(RESULTS), encoding="utf-8")
        self.recipe = root / "in" / "recipe.json"
        self.recipe.write_text(json.dumps(RECIPE).replace("ITEMS", str(self.items)), encoding="utf-8")
        self.export_run = root / "in" / "finished"  # what culnig export reads: neuron sets and score tables
        (self.export_run / "neurons").mkdir(parents=True)
        (self.export_run / "neurons" / "general.json").write_text(neuron_set_json(), encoding="utf-8")
        table().save(self.export_run / "scores" / "neur.safetensors")
        self.slots = {
            "recipe": str(self.recipe),
            "model": str(model_dir), "items": str(self.items), "table": str(self.table), "ctrl": str(self.ctrl),
            "neurons": str(self.neurons), "run_dir": str(self.run_dir), "out_file": str(root / "out" / "o.json"),
            "out_dir": str(root / "out" / "dir"), "batch": "2", "fraction": "0.1", "count": "1",
            "planted": str(planted_dir), "export_run": str(self.export_run),
        }


@dataclass(frozen=True)
class Command:
    """A subcommand's argv (``{slot}`` placeholders) and the good values it needs in place of the defaults."""

    argv: str
    good: tuple[tuple[str, str], ...] = ()
    loads_model: bool | None = None  # None: it does when it has a {model} slot

    @property
    def needs_model(self) -> bool:
        return "model" in slots_of(self) if self.loads_model is None else self.loads_model


# One line per subcommand. The slots a command has decide which bad-input classes it is run against.
COMMANDS = {
    "score": Command("score --model {model} --data {items} --format cloze --batch-size {batch} --out {out_file}"),
    "identify general": Command("identify general --neur {table} --ctrl {ctrl} --t-mlp {fraction} --out {out_file}"),
    "identify specific": Command("identify specific --neur {table} --ctrl {ctrl} --all-groups --t {fraction} "
                                 "--out {out_dir}"),
    "evaluate": Command("evaluate --model {model} --data {items} --format cloze --inhibit {neurons} "
                        "--random {count} --batch-size {batch} --out {out_dir}"),
    "report": Command("report {run_dir}"),
    "export": Command("export {export_run} --format csv --out {out_file}"),
    "merge": Command("merge {table} {ctrl} --out {out_file}"),
    "overlap": Command("overlap {neurons} {neurons} --model {model} --eval {items} --eval {items} --split all --format cloze "
                       "--batch-size {batch} --out {out_dir}"),
    "prompts": Command("prompts --model {model} --data {items} --format cloze --out {out_file}"),
    "run": Command("run --model {model} --data {items} --format cloze --t-mlp {fraction} --random {count} "
                   "--batch-size {batch} --out {out_dir}", good=(("items", "builtin:cultural"),)),
    "sweep": Command("sweep --model {model} --data {items} --format cloze --random {count} --batch-size {batch} "
                     "--out {out_dir}", good=(("items", "builtin:cultural"),)),
    "finetune": Command("finetune --model {model} --neurons {neurons} --format cloze --budget 0.3 "
                        "--batch-size {batch} --out {out_dir}"),
    "compare": Command("compare --model {model} --data {items} --format cloze --top-rate {fraction} --random {count} "
                       "--batch-size {batch} --out {out_dir}", good=(("items", "builtin:cultural"),)),
    "plant": Command("plant --model {model} --countries 4 --facts-per-country 2 --neurons-per-country 2 "
                     "--kin-pairs 1 --batch-size {batch} --out {out_dir}"),
    "validate": Command("validate {planted} --random {count} --t-mlp {fraction} --batch-size {batch} --out {out_dir}",
                        loads_model=True),
    "recipe check": Command("recipe check {recipe}"),
}

# Subcommands that read no file, data or number: nothing for the matrix to vary. (culnig build: its failures, a
# missing compiler through both entry points, are in tests/kernels/test_build.py.)
# culnig serve serves until Ctrl-C, so a good input never returns: its checks are in tests/cli/test_serve.py.
WITHOUT_INPUTS = {"build", "serve"}


@dataclass(frozen=True)
class Bad:
    """One class of bad input: the slot it replaces, how to make the bad value (writing files under the test's
    folder), and the fragments the one error line must hold (``{value}`` is the bad value)."""

    name: str
    slot: str
    make: Callable[[Inputs], str]
    expect: tuple[str, ...]


def write(path: Path, data: bytes | str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


BINARY = bytes(range(256)) * 4  # NUL bytes, 0xff ...: neither UTF-8 text nor any of the formats; its first
# byte that is not UTF-8 (0x80) is on line 2 (0x0a is a newline), column 118 (0x80 - 0x0a)


def truncated(path: Path, into: Path, cut: int | None = None) -> str:
    """The first half of ``path`` (or all but its last ``cut`` bytes), as a download cut short would leave it."""
    data = path.read_bytes()
    return write(into, data[: len(data) - cut] if cut else data[: len(data) // 2])


def model_config(root: Path, config: str) -> str:
    folder = root / "in" / "bad_model"
    write(folder / "config.json", config)
    return str(folder)


def corrupt_reused_table(i: Inputs) -> str:
    out = i.root / "out" / "dir"
    write(out / "scores" / "neur.safetensors", BINARY)
    return str(out)


def planted_copy(i: Inputs, *, model: bool = True, text=None, edit=None) -> str:
    """A copy of the good planted folder (its model's config only) with ``planted.json`` edited."""
    src = Path(i.slots["planted"])
    dst = i.root / "in" / "bad_planted"
    body = (src / "planted.json").read_text(encoding="utf-8")
    if edit is not None:
        obj = json.loads(body)
        edit(obj)
        body = json.dumps(obj, indent=1)
    write(dst / "planted.json", text(body) if text is not None else body)
    if model:
        write(dst / "model" / "config.json", (src / "model" / "config.json").read_bytes())
    for f in (src / "data").iterdir():
        write(dst / "data" / f.name, f.read_bytes())
    return str(dst)


def report_md_is_folder(i: Inputs) -> str:
    (i.run_dir / "report.md").mkdir()
    return str(i.run_dir)


def results(i: Inputs, text: str | bytes) -> str:
    write(i.run_dir / "results.json", text)
    return str(i.run_dir)


def bad_results(**row0) -> str:
    obj = json.loads(json.dumps(RESULTS))
    obj["rows"][1].update(row0)
    return json.dumps(obj, indent=1)


def without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


def item_file(i: Inputs, name: str, data: str | bytes) -> str:
    return write(i.root / "in" / name, data)


def neuron_file(i: Inputs, data: str | bytes) -> str:
    return write(i.root / "in" / "bad_set.json", data)


GOOD_NEURON = {"site": "layers.0.mlp.gate_proj", "index": 3, "score": 1.0}
RESULTS_JSON = "{value}/results.json"

BAD = [
    # item files ------------------------------------------------------------------------------------------
    Bad("missing", "items", lambda i: str(i.root / "in" / "nowhere" / "items.jsonl"), ("{value}",)),
    Bad("empty", "items", lambda i: item_file(i, "empty.jsonl", ""), ("{value}: no items",)),
    Bad("truncated", "items", lambda i: truncated(i.items, i.root / "in" / "cut.jsonl", cut=20),
        ("{value}, line 4: invalid JSON",)),
    Bad("non_utf8", "items", lambda i: item_file(i, "latin1.jsonl", jsonl(ITEMS[:1]).encode()
                                                  + json.dumps(dict(ITEMS[1], question="Caf\xe9?"), ensure_ascii=False).encode("latin-1")),
        ("{value}, line 2: not UTF-8 text (byte 0xe9",)),
    Bad("binary", "items", lambda i: item_file(i, "binary.jsonl", BINARY), ("{value}, line 2: not UTF-8 text (byte 0x80 at column 118)",)),
    Bad("wrong_schema", "items", lambda i: item_file(i, "schema.jsonl", jsonl([ITEMS[0], without(ITEMS[1], "choices")])),
        ("{value}, line 2", "'choices'")),
    Bad("duplicate_id", "items", lambda i: item_file(i, "dup.jsonl", jsonl([ITEMS[0], ITEMS[1], dict(ITEMS[2], id="a1")])),
        ("{value}, line 3", "'a1'", "line 1")),
    Bad("answer_out_of_range", "items", lambda i: item_file(i, "range.jsonl", jsonl([ITEMS[0], dict(ITEMS[1], answer_idx=2)])),
        ("{value}, line 2: field 'answer_idx'", "out of range")),
    # score tables ----------------------------------------------------------------------------------------
    Bad("missing", "table", lambda i: str(i.root / "in" / "none.safetensors"), ("score file not found: {value}",)),
    Bad("empty", "table", lambda i: write(i.root / "in" / "empty.safetensors", b""), ("{value}: empty file",)),
    Bad("truncated", "table", lambda i: truncated(i.table, i.root / "in" / "cut.safetensors"),
        ("{value}: not a readable safetensors score file",)),
    Bad("binary", "table", lambda i: write(i.root / "in" / "binary.safetensors", BINARY),
        ("{value}: not a readable safetensors score file",)),
    Bad("neuron_set_as_table", "table", lambda i: str(i.neurons), ("{value}: a JSON file (a neuron set?)",)),
    Bad("other_model", "ctrl", lambda i: str(table(model="other").save(i.root / "in" / "other.safetensors")),
        ("{value}: scores of model 'other'",)),
    Bad("other_layout", "ctrl",
        lambda i: str(table(widths={**WIDTHS, "layers.0.mlp.gate_proj": 7}).save(i.root / "in" / "w.safetensors")),
        ("{value}: site 'layers.0.mlp.gate_proj' has width 7",)),
    # neuron sets -----------------------------------------------------------------------------------------
    Bad("missing", "neurons", lambda i: str(i.root / "in" / "none.json"), ("neuron file not found: {value}",)),
    Bad("empty", "neurons", lambda i: neuron_file(i, ""), ("{value}: empty file",)),
    Bad("truncated", "neurons", lambda i: truncated(i.neurons, i.root / "in" / "cut.json"), ("{value}: not valid JSON",)),
    Bad("non_utf8", "neurons", lambda i: neuron_file(i, neuron_set_json().replace('"tiny"', '"ti\xf1y"').encode("latin-1")),
        ("{value}, line", "not UTF-8 text (byte 0xf1")),
    Bad("binary", "neurons", lambda i: neuron_file(i, BINARY), ("{value}, line 2: not UTF-8 text (byte 0x80 at column 118)",)),
    Bad("wrong_schema", "neurons", lambda i: neuron_file(i, neuron_set_json([GOOD_NEURON, without(GOOD_NEURON, "index")])),
        ("{value}: neurons[1]", "missing ['index']")),
    Bad("duplicate_neuron", "neurons", lambda i: neuron_file(i, neuron_set_json([GOOD_NEURON, GOOD_NEURON])),
        ("{value}: neurons[1]: duplicate neuron",)),
    Bad("index_out_of_range", "neurons",
        lambda i: neuron_file(i, neuron_set_json([dict(GOOD_NEURON, index=WIDTHS["layers.0.mlp.gate_proj"])])),
        ("{value}: site 'layers.0.mlp.gate_proj': neuron index 48 is out of range for width 48",)),
    Bad("other_layout", "neurons", lambda i: neuron_file(i, neuron_set_json([dict(GOOD_NEURON, site="layers.7.mlp.gate_proj")])),
        ("{value}: site 'layers.7.mlp.gate_proj' of this neuron set is not a site of the model",)),
    Bad("table_as_neuron_set", "neurons", lambda i: str(i.table), ("{value}: a safetensors score table",)),
    # run folders (report) ---------------------------------------------------------------------------------
    Bad("missing", "run_dir", lambda i: str(i.root / "in" / "no_run"), ("run folder not found: {value}",)),
    Bad("empty", "run_dir", lambda i: results(i, ""), (RESULTS_JSON + ": line 1: not valid JSON",)),
    Bad("truncated", "run_dir", lambda i: results(i, json.dumps(RESULTS, indent=1)[:200]),
        (RESULTS_JSON + ": line", "not valid JSON")),
    Bad("non_utf8", "run_dir", lambda i: results(i, json.dumps(RESULTS, indent=1).replace("Hand", "H\xe4nd").encode("latin-1")),
        (RESULTS_JSON + ", line 3: not UTF-8 text (byte 0xe4",)),
    Bad("binary", "run_dir", lambda i: results(i, BINARY), (RESULTS_JSON + ", line 2: not UTF-8 text (byte 0x80 at column 118)",)),
    Bad("wrong_schema", "run_dir", lambda i: results(i, bad_results(original="high")),
        (RESULTS_JSON + ": rows[1].original",)),
    Bad("accuracy_out_of_range", "run_dir", lambda i: results(i, bad_results(original=1.5)),
        (RESULTS_JSON + ": rows[1].original: expected an accuracy in [0, 1], got 1.5",)),
    Bad("unwritable_output", "run_dir", report_md_is_folder, ("{value}/report.md is a folder",)),
    # planted folders (validate) ------------------------------------------------------------------------
    Bad("missing", "export_run", lambda i: str(i.root / "in" / "no_run"), ("run folder not found: {value}",)),
    Bad("a_file", "export_run", lambda i: str(i.items), ("{value}: not a folder",)),
    Bad("nothing_to_export", "export_run", lambda i: str(i.root / "in"), ("{value}: no score tables",)),
    Bad("truncated_set", "export_run",
        lambda i: (truncated(i.export_run / "neurons" / "general.json", i.export_run / "neurons" / "general.json"),
                   str(i.export_run))[1], ("{value}/neurons/general.json: not valid JSON",)),
    Bad("empty_table", "export_run", lambda i: (write(i.export_run / "scores" / "neur.safetensors", b""),
                                                str(i.export_run))[1], ("{value}/scores/neur.safetensors: not a readable safetensors score file",)),
    Bad("missing", "planted", lambda i: str(i.root / "in" / "no_planted"),
        ("{value} is not a planted folder: {value}/planted.json is missing",)),
    Bad("without_model", "planted", lambda i: planted_copy(i, model=False), ("{value}/model holds no model",)),
    Bad("truncated", "planted", lambda i: planted_copy(i, text=lambda s: s[: len(s) // 2]),
        ("{value}/planted.json, line", "invalid JSON")),
    Bad("wrong_format", "planted", lambda i: planted_copy(i, text=lambda s: s.replace('"culnig-planted', '"other')),
        ("{value}/planted.json: field 'format'",)),
    Bad("neuron_of_no_country", "planted",
        lambda i: planted_copy(i, edit=lambda o: o["neurons"].update(Nowhere=[["layers.0.mlp.gate_proj", 1]])),
        ("{value}/planted.json: field 'neurons.Nowhere': not a country of the world",)),
    # models -----------------------------------------------------------------------------------------------
    Bad("missing_folder", "model", lambda i: str(i.root / "in" / "no" / "such" / "model"), ("model folder not found: {value}",)),
    Bad("folder_without_config", "model", lambda i: str(i.run_dir), ("{value} is a folder without config.json",)),
    Bad("not_a_model_file", "model", lambda i: str(i.items), ("{value} is a file but not a .gguf model",)),
    Bad("not_gguf", "model", lambda i: write(i.root / "in" / "fake.gguf", "hello"), ("{value} is not a GGUF file",)),
    Bad("broken_config", "model", lambda i: model_config(i.root, "{"), ("--model {value}: cannot use it",)),
    Bad("unknown_architecture", "model", lambda i: model_config(i.root, '{"model_type": "no-such-arch"}'),
        ("--model {value}: cannot use it", "no-such-arch")),
    # outputs ----------------------------------------------------------------------------------------------
    Bad("output_is_a_folder", "out_file", lambda i: str(i.root / "in"), ("--out {value}: is a folder",)),
    Bad("output_under_a_file", "out_file", lambda i: str(i.items / "o.json"),
        ("--out {value}: cannot create it", "is a file, not a folder")),
    Bad("output_is_a_file", "out_dir", lambda i: str(i.items), ("--out {value}: is a file, not a folder",)),
    Bad("output_under_a_file", "out_dir", lambda i: str(i.items / "dir"),
        ("--out {value}: cannot create it", "is a file, not a folder")),
    # numbers ----------------------------------------------------------------------------------------------
    Bad("zero", "batch", lambda i: "0", ("--batch-size must be a whole number >= 1, got 0",)),
    Bad("negative", "batch", lambda i: "-4", ("--batch-size must be a whole number >= 1, got -4",)),
    Bad("negative", "fraction", lambda i: "-0.1", ("must be a fraction in [0, 1], got -0.1",)),
    Bad("above_one", "fraction", lambda i: "1.5", ("must be a fraction in [0, 1], got 1.5",)),
    Bad("nan", "fraction", lambda i: "nan", ("must be a fraction in [0, 1], got nan",)),
    Bad("negative", "count", lambda i: "-1", ("--random must be a whole number >= 0, got -1",)),
    # recipes ---------------------------------------------------------------------------------------------
    Bad("missing", "recipe", lambda i: str(i.root / "in" / "none.yaml"), ("recipe '{value}': no such file",)),
    Bad("truncated", "recipe", lambda i: truncated(i.recipe, i.root / "in" / "cut.json", cut=20),
        ("{value}: line 1: not valid JSON",)),
    Bad("unknown_key", "recipe", lambda i: recipe_file(i, "k.json", lambda r: r["target"].update(colour=1)),
        ("{value}: target.colour: unknown key",)),
    Bad("wrong_type", "recipe", lambda i: recipe_file(i, "t.json", lambda r: r["thresholds"].update(mlp="x")),
        ("{value}: thresholds.mlp: expected a number, got str 'x'",)),
    Bad("missing_set", "recipe", lambda i: recipe_file(i, "s.json", lambda r: r["evaluation"][0].update(
        source="surface:none")), ("{value}: evaluation[0].source: missing set: no surface set named 'none'",)),
    Bad("bad_threshold", "recipe", lambda i: recipe_file(i, "b.json", lambda r: r["thresholds"].update(attn=2)),
        ("{value}: thresholds.attn: a threshold must be a fraction in [0, 1], got 2.0",)),
]

# Rows that are one command's own: a run folder whose reused score table is unreadable.
EXTRA = [("run", Bad("corrupt_reused_table", "out_dir", corrupt_reused_table,
                     ("{value}/scores/neur.safetensors: not a readable safetensors score file", "delete")))]


def slots_of(command: Command) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(command.argv) if name}


ROWS = [(name, bad) for name, command in COMMANDS.items() for bad in BAD if bad.slot in slots_of(command)] + EXTRA


def argv_of(command: Command, inputs: Inputs, **override: str) -> list[str]:
    values = {**inputs.slots, **dict(command.good), **override}
    return [part.format(**values) for part in command.argv.split()]


def tree(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root`` with its size and modification time (what 'nothing written' compares)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.stat()
            # A folder counts by its presence: probing that it is writable (a temp file made and removed) touches
            # its modification time.
            out[str(p.relative_to(root))] = (True,) if p.is_dir() else (False, st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("name, bad", ROWS, ids=[f"{n}-{b.slot}-{b.name}" for n, b in ROWS])
def test_bad_input_fails_fast_and_clean(name, bad, tmp_path, model_dir, planted_dir, capsys):
    inputs = Inputs(tmp_path, model_dir, planted_dir)
    value = bad.make(inputs)
    argv = argv_of(COMMANDS[name], inputs, **{bad.slot: value})
    before = tree(tmp_path)
    capsys.readouterr()

    status = cli.main(argv)  # the stand-in loader raises ModelLoaded if the command gets that far

    captured = capsys.readouterr()
    assert status == 1, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    command = name.split()[0]
    assert lines[0].startswith(f"culnig {command}: error: "), lines[0]
    for fragment in bad.expect:
        assert fragment.format(value=value) in lines[0], (fragment.format(value=value), lines[0])
    assert tree(tmp_path) == before, "the failed command wrote something"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_good_inputs_pass_the_checks(name, tmp_path, model_dir, planted_dir, capsys):
    """The control of the matrix: with every input good, a command gets past its checks (to the model loader,
    or to its end for the commands that load no model), so each row above fails for its own bad input."""
    inputs = Inputs(tmp_path, model_dir, planted_dir)
    argv = argv_of(COMMANDS[name], inputs)
    if COMMANDS[name].needs_model:
        with pytest.raises(ModelLoaded):
            cli.main(argv)
    else:
        assert cli.main(argv) == 0, capsys.readouterr().err


def test_every_subcommand_has_rows():
    """A new subcommand added to the CLI without a line in COMMANDS fails here."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    covered = {name.split()[0] for name in COMMANDS}
    assert set(sub.choices) == covered | WITHOUT_INPUTS
    per_command = {name: sum(1 for n, _ in ROWS if n == name) for name in COMMANDS}
    assert all(count >= 5 for count in per_command.values()), per_command

