"""Atomic writes when the disk fills up part-way (simulated): the previous file stays intact, no temp file is left,
and the error names the file; through the ``culnig`` command, one line with exit status 1."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from culnig_ext._utils import atomic
from culnig_ext.cli import main as cli
from culnig_ext.scoring import table
from culnig_ext._utils.atomic import atomic_write_text, partial_dir, publish_dir
from culnig_ext.scoring.table import ScoreTable


def disk_full_after(n_bytes: int):
    """A ``write(tmp)`` that writes ``n_bytes`` of junk to the temp file and then fails as a full disk does."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(b"x" * n_bytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write


def test_disk_full_keeps_the_previous_file_and_names_it(tmp_path):
    path = tmp_path / "data.json"
    atomic_write_text(path, '{"old": true}\n')
    with pytest.raises(OSError) as info:
        atomic.atomic_write(path, disk_full_after(4096))
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == (f"[Errno 28] cannot write {path}: No space left on device (its previous content is "
                               "unchanged)")
    assert path.read_text() == '{"old": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


def test_disk_full_on_a_new_file_leaves_nothing(tmp_path):
    path = tmp_path / "sub" / "new.json"
    with pytest.raises(OSError, match=f"cannot write {path}: No space left on device \\(nothing was written\\)"):
        atomic.atomic_write(path, disk_full_after(10))
    assert list(path.parent.iterdir()) == []


def tiny_table(value: float) -> ScoreTable:
    return ScoreTable(["A"], [1], {"layers.0.mlp.gate_proj": torch.full((1, 4), value, dtype=torch.float64)},
                      metadata={"model": "synthetic"})


def test_cli_disk_full_while_writing_a_neuron_set(tmp_path, monkeypatch, capsys):
    """``culnig identify`` over an existing neuron set; the disk fills up while the new one is written (the real
    JSON text is written half, then ENOSPC)."""
    neur = tiny_table(1.0).save(tmp_path / "neur.safetensors")
    out = tmp_path / "general.json"
    out.write_text("previous set\n")
    real_write_text = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        if self.name.startswith(".general.json."):
            real_write_text(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", half_then_full)
    status = cli.main(["identify", "general", "--neur", str(neur), "--t-mlp", "0.5", "--out", str(out)])
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"culnig identify: error: [Errno 28] cannot write {out}: No space left on device (its previous "
                   "content is unchanged)"]
    assert out.read_text() == "previous set\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["general.json", "neur.safetensors"]


def test_disk_full_while_saving_a_score_table(tmp_path, monkeypatch):
    """ScoreTable.save (the scorer's output and checkpoints): safetensors writes part of the file, then ENOSPC."""
    path = tmp_path / "t.safetensors"
    tiny_table(1.0).save(path)
    before = path.read_bytes()
    real_save = table.save_file

    def partial_save(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(len(before) // 3)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(table, "save_file", partial_save)
    with pytest.raises(OSError, match=f"cannot write {path}: No space left on device"):
        tiny_table(2.0).save(path)
    assert path.read_bytes() == before
    assert ScoreTable.load(path)["layers.0.mlp.gate_proj"].tolist() == [[1.0] * 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


def test_partial_dir_is_published_whole(tmp_path):
    final = tmp_path / "eval"
    final.mkdir()
    (final / "old.json").write_text("old")
    staging = partial_dir(final)
    assert staging == tmp_path / "eval.partial" and list(staging.iterdir()) == []
    (staging / "a.json").write_text("a")
    # Until published, the old folder is untouched and the new files sit under a name that says 'partial'.
    assert [p.name for p in final.iterdir()] == ["old.json"]
    publish_dir(staging, final)
    assert [p.name for p in final.iterdir()] == ["a.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]
    # A stale partial folder from an interrupted run is emptied, not mixed into the next one.
    stale = partial_dir(final)
    (stale / "b.json").write_text("b")
    assert list(partial_dir(final).iterdir()) == []
