"""Pre-flight checks as functions (the bad-input matrix in test_bad_input.py runs them through the command line):
model layouts without weights against the widths the config implies, writability probes, one-line errors, and
``run_pipeline`` refusing bad options before it writes anything."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from culnig_ext.models import loading as models
from culnig_ext.studies import option_checks, preflight
from culnig_ext.studies.pipeline import RunConfig, run_pipeline
from culnig_ext.scoring.table import ScoreTable
from tests.studies.test_pipeline import HEAD_DIM, HEADS, INTERMEDIATE, KV_HEADS, LAYERS, save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("preflight_model"))


def test_model_layout_from_the_config_alone(model_dir, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    expected = {}
    for layer in range(LAYERS):  # the widths the config's dimensions imply, written out by hand
        expected[f"layers.{layer}.mlp.gate_proj"] = INTERMEDIATE
        expected[f"layers.{layer}.self_attn.q_proj"] = HEADS * HEAD_DIM
        expected[f"layers.{layer}.self_attn.k_proj"] = KV_HEADS * HEAD_DIM
        expected[f"layers.{layer}.self_attn.v_proj"] = KV_HEADS * HEAD_DIM
    layout = preflight.model_layout(str(model_dir))
    assert layout == expected and list(layout) == list(expected)


def test_gguf_header_only(tmp_path):
    good = tmp_path / "m.gguf"
    good.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + b"\0" * 16)
    assert preflight.model_layout(str(good)) is None  # header fine; layout known only after loading
    bad = tmp_path / "n.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(ValueError, match=f"--model {bad}: {bad} is not a GGUF file"):
        preflight.model_layout(str(bad))


def test_unwritable_folder_is_refused_naming_it(tmp_path, monkeypatch):
    # Root may write anywhere, so a read-only folder is simulated where the probe writes.
    def refuse(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr(option_checks.tempfile, "mkstemp", refuse)
    target = tmp_path / "new" / "deeper" / "out.safetensors"
    with pytest.raises(ValueError) as info:
        preflight.output_file(target)
    assert str(info.value) == f"--out {target}: cannot write in {tmp_path} (Permission denied)"
    assert not (tmp_path / "new").exists()


def test_probe_leaves_nothing(tmp_path):
    assert preflight.output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert preflight.output_file(tmp_path / "x.json") == tmp_path / "x.json"
    assert list(tmp_path.iterdir()) == []


def test_device_must_exist():
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        with pytest.raises(ValueError, match=f"this machine has {n} CUDA device"):
            preflight.device(f"cuda:{n}")
    else:
        with pytest.raises(ValueError, match="--device cuda:0: CUDA is not available on this machine"):
            preflight.device("cuda:0")
    with pytest.raises(ValueError, match="--device 'gpu0': not a device"):
        preflight.device("gpu0")
    assert preflight.device("cpu") is None


@pytest.mark.parametrize("check, value", [
    (preflight.positive_int, 0), (preflight.positive_int, True), (preflight.positive_int, 2.0),
    (preflight.non_negative_int, -1), (preflight.fraction, -0.01), (preflight.fraction, 1.01),
    (preflight.fraction, float("nan")), (preflight.finite, float("inf")),
])
def test_numbers_out_of_range(check, value):
    with pytest.raises(ValueError, match=r"^--x must be"):
        check("--x", value)


def test_numbers_in_range():
    assert preflight.positive_int("--x", 1) == 1
    assert preflight.non_negative_int("--x", 0) == 0
    assert preflight.fraction("--x", 0) == 0.0 and preflight.fraction("--x", 1) == 1.0
    assert preflight.finite("--x", None, optional=True) is None


def test_error_line_is_one_line():
    exc = ValueError("unknown item source 'x'; accepted:\n  builtin:cultural\n  builtin:general")
    assert preflight.error_line("score", exc) == (
        "culnig score: error: unknown item source 'x'; accepted: builtin:cultural; builtin:general")
    assert preflight.error_line("identify", KeyError("unknown group 'Z'")) == "culnig identify: error: unknown group 'Z'"


def test_tables_of_one_layout():
    sites = {"layers.0.mlp.gate_proj": 4, "layers.0.self_attn.q_proj": 2}
    a = ScoreTable(["A"], [1], {s: torch.zeros(1, w) for s, w in sites.items()}, metadata={"model": "m"})
    fewer = ScoreTable(["A"], [1], {"layers.0.mlp.gate_proj": torch.zeros(1, 4)}, metadata={"model": "m"})
    with pytest.raises(ValueError, match=r"^b.safetensors: other sites than a.safetensors \(only there: "
                                         r"\['layers.0.self_attn.q_proj'\], only here: \[\]\)"):
        preflight.same_layout({"a.safetensors": a, "b.safetensors": fewer})
    assert preflight.same_layout({"a.safetensors": a, "c.safetensors": a}) == sites


def test_run_pipeline_refuses_bad_options_before_writing(tmp_path, model_dir, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    out = tmp_path / "run"
    for bad, message in ((dict(t_mlp=-0.5), "--t-mlp must be a fraction in [0, 1], got -0.5"),
                         (dict(batch_size=0), "--batch-size must be a whole number >= 1, got 0"),
                         (dict(max_test_items=0), "--max-test-items must be a whole number >= 1, got 0"),
                         (dict(n_random=-2), "--random must be a whole number >= 0, got -2"),
                         (dict(data=str(tmp_path / "none.jsonl")), f"{tmp_path / 'none.jsonl'}")):
        with pytest.raises((ValueError, FileNotFoundError)) as info:
            run_pipeline(RunConfig(out=str(out), model=str(model_dir), format="cloze", **bad))
        assert message in str(info.value)
        assert not out.exists()


def test_table_header_check_refuses_a_truncated_table(tmp_path):
    path = tmp_path / "t.safetensors"
    ScoreTable(["A"], [1], {"layers.0.mlp.gate_proj": torch.zeros(1, 1000)}).save(path)
    preflight.score_table_header(path)  # whole: passes
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # the tensor data cut short, the header intact
    with pytest.raises(ValueError, match=f"{path}: not a readable safetensors score file .*not fully covered"):
        preflight.score_table_header(path)
    path.write_text('{"format": "culnig-neurons/1"}')
    with pytest.raises(ValueError, match=r"a JSON file \(a neuron set\?\)"):
        preflight.score_table_header(path)


def test_evaluate_into_the_folder_of_an_earlier_evaluation(tmp_path, model_dir):
    """Re-running into a finished evaluation's folder (eval/, results.json, report.md present) passes the checks;
    an eval that is a file, or a report.md that is a folder, does not."""
    from argparse import Namespace

    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "group": "A", "question": "Q?", "choices": ["x", "y"], "answer_idx": 1}\n')
    out = tmp_path / "ev"
    (out / "eval").mkdir(parents=True)
    (out / "results.json").write_text("{}")
    (out / "report.md").write_text("old")
    opts = Namespace(model=str(model_dir), data=[str(items)], split="all", seed=0, inhibit=None, random=0,
                     batch_size=4, device=None, out=str(out))
    checked = preflight.check_evaluate(opts)
    assert checked.neurons is None and [it.id for it in checked.sets[str(items)]] == ["a"]
    (out / "report.md").unlink()
    (out / "report.md").mkdir()
    with pytest.raises(ValueError, match=f"--out {out}: {out / 'report.md'} is a folder"):
        preflight.check_evaluate(opts)
    (out / "report.md").rmdir()
    (out / "eval").rmdir()
    (out / "eval").write_text("")
    with pytest.raises(ValueError, match=f"{out / 'eval'} is a file"):
        preflight.check_evaluate(opts)


def test_neuron_set_checked_against_a_gguf_model_before_loading(tmp_path, monkeypatch, capsys):
    """A GGUF model's sites come from the file's header: a neuron set that does not fit is refused unloaded."""
    from culnig_ext.cli import main as cli
    from culnig_ext.selection.neurons import Neuron, NeuronSet
    from tests.models.test_gguf_header import FFN, llama_tensors, write_gguf

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    model = tmp_path / "m.gguf"
    write_gguf(model, llama_tensors(layers=2))
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "group": "A", "question": "Q?", "choices": ["x", "y"], "answer_idx": 1}\n')
    bad = tmp_path / "set.json"
    NeuronSet([Neuron("layers.1.mlp.gate_proj", FFN, 1.0)]).save(bad)
    argv = ["evaluate", "--model", str(model), "--data", str(items), "--inhibit", str(bad), "--out", str(tmp_path / "ev")]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err.strip() == (
        f"culnig evaluate: error: {bad}: site 'layers.1.mlp.gate_proj': neuron index {FFN} is out of range for width "
        f"{FFN} (model {model})")
    assert not (tmp_path / "ev").exists()
