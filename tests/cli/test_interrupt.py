"""Interruptions with real signals: ``culnig score`` / ``culnig evaluate`` on a tiny model saved to a temp folder run
in a subprocess, slowed down by a forward pre-hook that sleeps (and says so on stderr), and get SIGINT or SIGTERM
while they work. Checked: exit status 130 / 143, one message saying what was kept and the command that resumes, no
output that looks complete, no temp file left; following the message (running the command again) finishes the job.
A scorer checkpoint interrupted by SIGTERM resumes to the table of an uninterrupted run."""
from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from culnig_ext.cli import main as cli
from culnig_ext._utils.interrupt import Terminated, exit_status, signals_as_exceptions
from culnig_ext.selection.neurons import Neuron, NeuronSet
from culnig_ext.scoring.table import ScoreTable
from tests.studies.test_pipeline import save_tiny_model
from tests.fixtures import random_items, tiny_model

ROOT = Path(__file__).resolve().parents[2]
MARK = "CULNIG-TEST-FORWARD"

# Runs the culnig command (argv) with every forward pass of the model slowed by 0.2 s and announced on stderr.
SLOW_CLI = f"""
import sys, time
from culnig_ext.cli import main as cli
from culnig_ext.models import loading as models
real = models.load_model
def slow(*args, **kwargs):
    model, tokenizer = real(*args, **kwargs)
    def pause(module, inputs):
        print({MARK!r}, file=sys.stderr, flush=True)
        time.sleep(0.2)
    model.get_input_embeddings().register_forward_pre_hook(pause)
    return model, tokenizer
models.load_model = slow
sys.exit(cli.main(sys.argv[1:]))
"""

ITEMS = [
    {"id": f"{g}{k}", "group": g, "question": f"Which option is right for {g} number {k}?",
     "choices": ["Rice", "Bread", "Soup"], "answer_idx": k % 3}
    for g in ("A", "B") for k in range(6)
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("interrupt_model"))


@pytest.fixture
def items_file(tmp_path) -> Path:
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ITEMS), encoding="utf-8")
    return path


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
                TOKENIZERS_PARALLELISM="false")


def run_until(argv_script: list[str], ready, sig: int, cwd: Path, timeout: float = 120.0):
    """Start the subprocess, wait until ``ready(marks seen)`` holds, send ``sig``; returns (status, stderr lines)."""
    # The child gets SIGINT's default disposition even where the tests run as a shell's background job (which
    # ignores SIGINT, and an ignored signal is inherited and respected).
    proc = subprocess.Popen([sys.executable, *argv_script], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env(), cwd=cwd,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: queue.Queue = queue.Queue()
    err: list[str] = []

    def pump():
        for line in proc.stderr:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    marks, deadline, sent = 0, time.monotonic() + timeout, False
    try:
        while True:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                pytest.fail(f"no progress before the timeout; stderr so far: {err[-5:]}")
            if line is None:
                break
            if line.startswith("culnig_ext: ") and "culnig kernels" in line:
                continue  # the kernel cache's one-time build/wait notice (another process may be building it)
            if line == MARK:
                marks += 1
                if not sent and ready(marks):
                    proc.send_signal(sig)
                    sent = True
            elif not line.startswith("[culnig] "):  # progress messages are logged to stderr; not the error output
                err.append(line)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sent, f"the command finished before it was interrupted: {err[-5:]}"
    return status, err


EXPECTED_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}


def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


# Each subprocess costs seconds of imports: one signal per command here (SIGINT for score, SIGTERM for evaluate and
# the checkpoint test below); both signals' exceptions and statuses are also tested in-process at the end.
@pytest.mark.parametrize("sig", [signal.SIGINT], ids=["SIGINT"])
def test_interrupted_score_leaves_no_table(sig, model_dir, items_file, tmp_path):
    out = tmp_path / "scores" / "neur.safetensors"
    argv = ["score", "--model", str(model_dir), "--data", str(items_file), "--format", "cloze", "--batch-size", "2",
            "--no-progress", "--out", str(out)]
    status, err = run_until(["-c", SLOW_CLI, *argv], lambda marks: marks >= 2, sig, tmp_path)

    assert status == EXPECTED_STATUS[sig]
    assert len(err) == 1, err
    name = signal.Signals(sig).name
    # culnig score checkpoints next to its output by default (#8): the finished batches are kept there
    checkpoint = Path(f"{out}.ckpt")
    assert err[0] == (f"culnig score: interrupted by {name}; no score table was written to {out}; the partial table "
                      f"is checkpointed in {checkpoint}. To resume, run the same command again: "
                      f"{shlex.join(['culnig', *argv])}")
    assert int(ScoreTable.load(checkpoint).metadata["batches_done"]) >= 1
    assert not out.exists()
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=["SIGTERM"])
def test_interrupted_evaluate_keeps_a_partial_folder_and_resumes(sig, model_dir, items_file, tmp_path, capsys):
    neurons = tmp_path / "set.json"
    NeuronSet([Neuron("layers.0.mlp.gate_proj", 3, 1.0), Neuron("layers.1.self_attn.v_proj", 2, 0.5)]).save(neurons)
    out = tmp_path / "ev"
    argv = ["evaluate", "--model", str(model_dir), "--data", str(items_file), "--format", "cloze", "--batch-size", "12",
            "--inhibit", str(neurons), "--random", "2", "--no-progress", "--out", str(out)]
    # Interrupted once the first condition's record is written (three more conditions to go).
    status, err = run_until(["-c", SLOW_CLI, *argv], lambda marks: any((out / "eval.partial").glob("*.json")), sig,
                            tmp_path)

    assert status == EXPECTED_STATUS[sig]
    assert len(err) == 1, err
    assert err[0].startswith(f"culnig evaluate: interrupted by {signal.Signals(sig).name}; finished per-condition "
                             f"records are in {out}/eval.partial/; no results.json or report.md was written")
    assert err[0].endswith(f"To resume, run the same command again: {shlex.join(['culnig', *argv])}")
    partial = sorted(p.name for p in (out / "eval.partial").iterdir())
    assert partial and all(name.endswith(".json") for name in partial)
    assert "original.json" in partial[0]
    # Nothing that looks like a finished evaluation.
    assert not (out / "eval").exists() and not (out / "results.json").exists() and not (out / "report.md").exists()
    assert temp_files(tmp_path) == []

    # Following the message: the same command (here in-process, without the slow hook) finishes the evaluation.
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert not (out / "eval.partial").exists()
    assert sorted(p.name.rsplit("__", 1)[1] for p in (out / "eval").iterdir()) == [
        "inhibited.json", "original.json", "random0.json", "random1.json"]
    assert json.loads((out / "results.json").read_text())["rows"][0]["n_items"] == len(ITEMS)


# The Python API: scoring with a checkpoint after every batch, inside signals_as_exceptions, killed by SIGTERM.
SLOW_API = f"""
import sys, time, torch
from culnig_ext import score
from culnig_ext._utils.interrupt import exit_status, signals_as_exceptions
from tests.fixtures import random_items, tiny_model
api_model = lambda: tiny_model("llama", dtype=torch.float64, seed=3)
api_items = lambda: random_items(14, seed=5)
model = api_model()
def pause(module, inputs):
    print({MARK!r}, file=sys.stderr, flush=True)
    time.sleep(0.2)
model.get_input_embeddings().register_forward_pre_hook(pause)
try:
    with signals_as_exceptions():
        score(model, api_items(), batch_size=2, progress=False, checkpoint=sys.argv[1], checkpoint_every=1)
except KeyboardInterrupt as exc:
    print("interrupted", type(exc).__name__, file=sys.stderr, flush=True)
    sys.exit(exit_status(exc))
"""


def api_model():
    return tiny_model("llama", dtype=torch.float64, seed=3)  # as in SLOW_API


def api_items():
    return random_items(14, seed=5)  # as in SLOW_API


def test_sigterm_during_checkpointed_scoring_loses_no_finished_batch(tmp_path):
    from culnig_ext import score
    from culnig_ext.scoring.table import ScoreTable

    checkpoint = tmp_path / "partial.safetensors"
    status, err = run_until(["-c", SLOW_API, str(checkpoint)], lambda marks: marks >= 4, signal.SIGTERM, tmp_path)
    assert status == 143
    assert err[-1] == "interrupted Terminated"
    saved = ScoreTable.load(checkpoint)
    done = int(saved.metadata["batches_done"])
    assert 3 <= done < 7  # 14 items in batches of 2: interrupted in the middle
    assert temp_files(tmp_path) == []

    resumed = score(api_model(), api_items(), batch_size=2, progress=False, checkpoint=checkpoint)
    # The reference: the same items scored without interruption, item by item (another batching entirely).
    whole = score(api_model(), api_items(), batch_size=1, progress=False)
    assert resumed.counts.tolist() == whole.counts.tolist() == [5, 5, 4]
    for site in whole.sites:
        torch.testing.assert_close(resumed[site], whole[site], rtol=1e-9, atol=1e-12)
    assert not checkpoint.exists()


# ------------------------------------------------------------------------------------- in-process units
@pytest.fixture
def default_signals():
    """SIGINT and SIGTERM at their default dispositions for the test (pytest may run as a background job, where
    SIGINT is ignored), restored afterwards."""
    before = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        signal.signal(sig, handler)


def test_sigterm_becomes_terminated_and_handlers_are_restored(default_signals):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as info:
        with signals_as_exceptions():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here, long before the sleep ends
    assert info.value.signum == signal.SIGTERM and exit_status(info.value) == 143
    assert isinstance(info.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) is before
    assert exit_status(KeyboardInterrupt()) == 130


def test_finally_blocks_run_on_sigterm(default_signals):
    ran = []
    with pytest.raises(Terminated):
        with signals_as_exceptions():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                ran.append("finally")
    assert ran == ["finally"]


def test_sigint_is_keyboard_interrupt_with_status_130(default_signals):
    with pytest.raises(KeyboardInterrupt) as info:
        with signals_as_exceptions():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert not isinstance(info.value, Terminated) and exit_status(info.value) == 130
    assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL


def test_ignored_and_foreign_handlers_are_left_alone(default_signals):
    seen = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    with signals_as_exceptions():
        os.kill(os.getpid(), signal.SIGINT)  # ignored: nothing happens
        os.kill(os.getpid(), signal.SIGTERM)  # the foreign handler records it
        time.sleep(0.05)
    assert seen == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_cli_sigterm_in_process_exit_143_and_nothing_written(tmp_path, monkeypatch, capsys, default_signals):
    """``culnig report`` gets SIGTERM while it renders: status 143, the message, and report.md not written."""
    from culnig_ext.reporting import report

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    results = {"title": "t", "model": "m", "neuron_set": "s", "rows": [
        {"eval_set": "S", "n_items": 2, "original": 0.5, "inhibited": 0.5, "random": [], "p_value": None}]}
    (run_dir / "results.json").write_text(json.dumps(results))

    def killed(res):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(report, "render_markdown", killed)
    assert cli.main(["report", str(run_dir)]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"culnig report: interrupted by SIGTERM; report files are written whole or not at all; those not "
                   f"yet rewritten keep their previous content. To resume, run the same command again: culnig "
                   f"report {run_dir}"]
    assert not (run_dir / "report.md").exists()
    assert temp_files(run_dir) == []
