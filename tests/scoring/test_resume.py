"""Jobs that survive a kill: ``kill -9`` of a real ``culnig score`` process, then the same command again, gives the
uninterrupted run's file byte for byte; an interruption (Ctrl-C) flushes a checkpoint and says how to resume; a
truncated, foreign or mismatched checkpoint is refused naming its path and the field."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import culnig_ext
from culnig_ext.cli import main as cli
from culnig_ext.scoring.resume import CheckpointError, rank_path
from culnig_ext.data import CULTURAL_PATH
from culnig_ext.scoring.table import ScoreTable
from tests.studies.test_pipeline import save_tiny_model
from tests.fixtures import random_items, tiny_model

ROOT = Path(__file__).resolve().parents[2]
# the real CLI, with each batch slowed down so that the kill lands mid-run
SLOW_CLI = ("import sys, time; import culnig_ext.scoring.scorer as s; step = s._step; "
            "s._step = lambda *a, **k: (time.sleep(0.25), step(*a, **k))[1]; "
            "from culnig_ext.cli.main import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses run with OMP_NUM_THREADS=1: same kernels, same bits
    yield
    torch.set_num_threads(before)


class Stop(KeyboardInterrupt):
    """Ctrl-C in the middle of the fourth batch."""


def interrupt_at(model, batch: int):
    calls = {"n": 0}

    def hook(module, args):
        calls["n"] += 1
        if calls["n"] == batch:
            raise Stop()

    return model.model.embed_tokens.register_forward_pre_hook(hook)


def test_kill_9_then_the_same_command_gives_a_bit_identical_file(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    args = ["score", "--model", str(model_dir), "--data", str(CULTURAL_PATH), "--format", "cloze", "--batch-size",
            "2", "--max-items", "40", "--no-progress"]
    full = tmp_path / "full.safetensors"
    assert cli.main(args + ["--out", str(full), "--checkpoint", "none"]) == 0

    out = tmp_path / "out.safetensors"
    ckpt = Path(str(out) + ".ckpt")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = args + ["--out", str(out), "--checkpoint-every", "1"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *cmd], env=env, stderr=subprocess.PIPE, text=True)
    deadline, done = time.monotonic() + 180, 0
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpt.exists():
            done = int(ScoreTable.load(ckpt).metadata["batches_done"])
            if done >= 3:
                break
        time.sleep(0.1)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and ckpt.exists()
    at_kill = int(ScoreTable.load(ckpt).metadata["batches_done"])
    assert 3 <= at_kill < 20  # 40 items in batches of 2: killed part-way

    again = subprocess.run([sys.executable, "-m", "culnig_ext.cli.main", *cmd], env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert out.read_bytes() == full.read_bytes()
    assert not ckpt.exists(), "the checkpoint is removed once the output is written"


def test_interruption_flushes_a_checkpoint_and_resumes_bit_identically(tmp_path):
    model = tiny_model("llama")
    items = random_items(12, seed=2, multi_token=True)
    full = culnig_ext.score(model, items, batch_size=2, progress=False)
    ckpt = tmp_path / "c.ckpt"
    handle = interrupt_at(model, 4)
    try:
        with pytest.raises(Stop) as stopped:
            culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint=ckpt, checkpoint_every=100)
    finally:
        handle.remove()
    # no periodic snapshot was due (every 100 batches): the interruption itself wrote the 3 complete batches
    assert ScoreTable.load(ckpt).metadata["batches_done"] == "3"
    assert stopped.value.__notes__ == [f"scoring stopped after batch 3; progress is saved in {ckpt}: run the same "
                                       "command (the same score() call) again to resume"]
    resumed = culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint=ckpt)
    assert resumed.metadata == full.metadata and torch.equal(resumed.item_hashes, full.item_hashes)
    assert torch.equal(resumed.counts, full.counts) and torch.equal(resumed.prob_sums, full.prob_sums)
    for site in full.sites:
        assert torch.equal(resumed[site], full[site]), site
    assert not ckpt.exists()


def make_checkpoint(path: Path, model, items) -> None:
    handle = interrupt_at(model, 3)
    try:
        with pytest.raises(Stop):
            culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint=path, checkpoint_every=1)
    finally:
        handle.remove()
    assert path.is_file()


def test_truncated_and_foreign_checkpoints_are_refused_naming_the_path(tmp_path):
    model = tiny_model("llama")
    items = random_items(8, seed=3)
    ckpt = tmp_path / "t.ckpt"
    make_checkpoint(ckpt, model, items)
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"checkpoint {ckpt} cannot be read"):
        culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint=ckpt)
    assert ckpt.read_bytes() == data[: len(data) // 2], "a refused checkpoint is left as it was"
    culnig_ext.score(model, items, batch_size=2, progress=False).save(ckpt)  # a finished table, not a checkpoint
    with pytest.raises(CheckpointError, match=f"checkpoint {ckpt} is not a culnig checkpoint"):
        culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint=ckpt)


def test_resume_refuses_other_provenance_or_items_naming_the_field(tmp_path):
    model = tiny_model("llama")  # float64
    items = random_items(8, seed=4)
    ckpt = tmp_path / "p.ckpt"
    make_checkpoint(ckpt, model, items)
    with pytest.raises(CheckpointError, match="dtype='float64', this run has 'float32'"):
        culnig_ext.score(tiny_model("llama", dtype=torch.float32), items, batch_size=2, progress=False,
                         checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="clamp_min"):
        culnig_ext.score(model, items, batch_size=2, clamp_min=0.0, progress=False, checkpoint=ckpt)
    with pytest.raises(CheckpointError, match="prompt_format=''"):
        culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint=ckpt,
                         provenance={"prompt_format": "cloze"})
    other = [dict(it, answer_id=(it["answer_id"] % 90) + 4) for it in items]
    with pytest.raises(CheckpointError, match="other items"):
        culnig_ext.score(model, other, batch_size=2, progress=False, checkpoint=ckpt)
    assert ckpt.is_file()


def test_rank_path():
    assert rank_path("a/s.ckpt", 0, 1) == Path("a/s.ckpt")
    assert rank_path("a/s.ckpt", 1, 4) == Path("a/s.ckpt.rank1-of-4")
