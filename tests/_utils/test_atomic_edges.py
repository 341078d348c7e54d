"""_utils.atomic at its edges: where the temp file goes, bytes and text written exactly, nested folders, failures
that remove the temp file, errors that name the file, and publishing over an existing folder."""
from __future__ import annotations

import errno
import os

import pytest

from culnig_ext._utils.atomic import (atomic_write, atomic_write_bytes, atomic_write_text, partial_dir,
                                      publish_dir)


def test_the_temp_file_sits_beside_the_target_and_says_what_it_is(tmp_path):
    target = tmp_path / "scores.safetensors"
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_bytes(b"x")

    assert atomic_write(target, write) == target
    (tmp,) = seen
    assert tmp.parent == tmp_path and tmp.name.startswith(".scores.safetensors.") and tmp.name.endswith(".tmp")
    assert not tmp.exists() and target.read_bytes() == b"x"


def test_bytes_and_text_land_exactly_into_new_nested_folders(tmp_path):
    data = bytes(range(256))
    out = atomic_write_bytes(tmp_path / "a" / "b" / "blob.bin", data)
    assert out == tmp_path / "a" / "b" / "blob.bin" and out.read_bytes() == data
    text = "Ürümqi, 東京, naïve\n"
    out = atomic_write_text(tmp_path / "c" / "d" / "t.md", text)
    assert out.read_bytes() == text.encode("utf-8")
    assert sorted(p.name for p in (tmp_path / "c" / "d").iterdir()) == ["t.md"]  # no temp file left


def test_a_failing_writer_that_removed_its_temp_file_raises_its_own_error(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")

    def write(tmp):
        tmp.unlink()
        raise ValueError("the writer's own error")

    with pytest.raises(ValueError, match="the writer's own error"):
        atomic_write(target, write)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]

    def write_then_fail(tmp):
        tmp.unlink()
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(target, write_then_fail)
    assert info.value.errno == errno.ENOSPC
    assert str(info.value) == (f"[Errno {errno.ENOSPC}] cannot write {target}: No space left on device (its "
                               "previous content is unchanged)")


def test_an_os_error_of_another_constructor_is_named_as_a_plain_os_error(tmp_path):
    class Odd(OSError):
        def __init__(self, only):  # a constructor that does not take (errno, message)
            super().__init__(errno.EIO, only)

    def write(tmp):
        raise Odd("device hiccup")

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "new.bin", write)
    assert type(info.value) is OSError and info.value.errno == errno.EIO
    assert str(info.value) == f"[Errno {errno.EIO}] cannot write {tmp_path / 'new.bin'}: device hiccup (nothing was written)"


def test_a_folder_that_cannot_hold_the_temp_file_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=rf"cannot write {blocker / 'x.txt'}: .*\(nothing was written\)"):
        atomic_write_text(blocker / "x.txt", "x")  # its parent is a file


def test_partial_dir_makes_missing_parents_and_empties_an_old_staging_folder(tmp_path):
    final = tmp_path / "runs" / "deep" / "run1"
    staging = partial_dir(final)
    assert staging == tmp_path / "runs" / "deep" / "run1.partial" and staging.is_dir()
    (staging / "leftover").write_text("x")
    assert list(partial_dir(final).iterdir()) == []


def test_publishing_over_a_folder_replaces_it_and_leaves_nothing_else(tmp_path):
    final = tmp_path / "run"
    final.mkdir()
    (final / "old.txt").write_text("old")
    staging = partial_dir(final)
    (staging / "new.txt").write_text("new")
    assert publish_dir(staging, final) == final
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the old folder's holder is gone too
    # the first publish (no old folder)
    other = tmp_path / "fresh"
    s = partial_dir(other)
    (s / "a").write_text("a")
    publish_dir(s, other)
    assert (other / "a").read_text() == "a" and sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "run"]


def test_the_old_folder_is_moved_aside_beside_the_target(tmp_path, monkeypatch):
    # Beside the target, so both renames stay on one filesystem (atomic), under a name that says what it is.
    import tempfile

    made = []
    real = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):
        made.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    final = tmp_path / "run"
    final.mkdir()
    publish_dir(partial_dir(final), final)
    assert made == [{"prefix": ".run.old.", "dir": tmp_path}]


def test_an_os_error_subclass_keeps_its_class(tmp_path):
    def write(tmp):
        raise PermissionError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError) as info:
        atomic_write(tmp_path / "ro.txt", write)
    assert info.value.errno == errno.EACCES and f"cannot write {tmp_path / 'ro.txt'}" in str(info.value)


def test_an_os_error_subclass_without_an_errno_mapping_keeps_its_class(tmp_path):
    class QuotaExceeded(OSError):
        """OSError(errno, ...) would not make this class by itself."""

    def write(tmp):
        raise QuotaExceeded(errno.EDQUOT, "Disk quota exceeded")

    with pytest.raises(QuotaExceeded, match=r"cannot write .*q\.bin: Disk quota exceeded \(nothing was written\)"):
        atomic_write(tmp_path / "q.bin", write)
