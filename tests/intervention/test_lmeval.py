"""``culnig evaluate --lm-eval TASK``: an lm-evaluation-harness multiple-choice task defined on a local JSONL file
(offline), run on our loaded tiny model with a neuron set inhibited and a matched random set; its accuracies equal a
float64 reference that zeroes the neurons' weight rows and ranks " " + option by summed log-probabilities."""
from __future__ import annotations

import contextlib
import io
import json

import pytest

from culnig_ext.cli import main as cli
from culnig_ext.data import load_items
from culnig_ext.models.loading import load_model
from culnig_ext.selection.neurons import NeuronSet
from tests.studies.test_overlap import reference_accuracy
from tests.studies.test_pipeline import save_tiny_model

TASK_YAML = """task: culnig_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def test_lm_eval_local_task_inhibited_and_random(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir = save_tiny_model(tmp_path / "m")
    items = load_items("builtin:general")[:12]
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"question": it.question, "choices": list(it.choices),
                                        "answer": it.answer_idx}) + "\n" for it in items))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "culnig_local_mc.yaml").write_text(TASK_YAML.format(data=data))
    neurons = NeuronSet.from_pairs([("layers.0.mlp.gate_proj", i, 1.0) for i in range(0, 48, 2)]
                                   + [("layers.1.self_attn.q_proj", 3, 1.0)], method="test")
    neurons.save(tmp_path / "set.json")
    out = tmp_path / "ev"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main(["evaluate", "--model", str(model_dir), "--lm-eval", "culnig_local_mc", "--lm-eval-include",
                         str(tasks), "--inhibit", str(tmp_path / "set.json"), "--random", "1", "--no-progress",
                         "--out", str(out)])
    assert code == 0, buf.getvalue()
    rows = json.loads((out / "results.json").read_text())["rows"]
    row = next(r for r in rows if r["eval_set"] == "lm-eval: culnig_local_mc (acc)")
    model, tok = load_model(str(model_dir))
    empty = NeuronSet.from_pairs([], method="none")
    assert row["n_items"] == 12
    assert row["original"] == pytest.approx(reference_accuracy(model, tok, items, empty))
    assert row["inhibited"] == pytest.approx(reference_accuracy(model, tok, items, neurons))
    assert len(row["random"]) == 1
    assert "lm-eval: culnig_local_mc" in (out / "report.md").read_text()


def test_lm_eval_unknown_task_fails_before_loading(tmp_path, capsys):
    code = cli.main(["evaluate", "--model", "smollm2", "--lm-eval", "no_such_task_xyz", "--out", str(tmp_path / "o")])
    assert code == 1
    assert "unknown lm-evaluation-harness task(s) ['no_such_task_xyz']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
