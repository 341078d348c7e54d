"""Atomic file writes: an interrupted write never leaves a truncated file under the final name."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file in ``path``'s folder, then rename it onto ``path``.

    On any failure the temp file is removed and the exception re-raised; ``path`` keeps its old content. An
    ``OSError`` (disk full, quota, read-only folder ...) is re-raised as the same class naming ``path``: the error
    of a failed write would otherwise name the temp file, or nothing.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:  # the bytes reach the disk before the name points at them
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(exc, path) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` re-made to say which file could not be written and that its previous content is unchanged."""
    reason = exc.strerror or str(exc)
    kept = "its previous content is unchanged" if path.is_file() else "nothing was written"
    try:
        return type(exc)(exc.errno, f"cannot write {path}: {reason} ({kept})")
    except TypeError:  # an OSError subclass with another constructor
        return OSError(exc.errno, f"cannot write {path}: {reason} ({kept})")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def partial_dir(final: str | os.PathLike) -> Path:
    """The staging folder of ``final`` (``final.partial``), emptied: files go there until ``publish_dir``."""
    final = Path(final)
    staging = final.with_name(final.name + ".partial")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def publish_dir(staging: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Put a finished staging folder in place of ``final`` (two renames; an old ``final`` is removed after the
    swap). Until this runs, an interrupted job leaves ``final`` as it was and its partial files under a name that
    says so."""
    staging, final = Path(staging), Path(final)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old)
    return final
