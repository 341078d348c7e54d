"""The JIT build's name carries a hash of the kernel sources and flags (culnig_ext/kernels/loader.py): two checkouts
with different kernels never share a build folder, and the same sources get the same name wherever they lie."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from culnig_ext.kernels import loader

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def csrc(tmp_path) -> Path:
    copy = tmp_path / "a" / "csrc"
    shutil.copytree(REPO / "csrc", copy)
    return copy


def src_part(key: str) -> str:
    parts = [p for p in key.split("_") if p.startswith("src")]
    assert len(parts) == 1, key
    return parts[0]


def test_same_sources_same_name_wherever_they_are(csrc, tmp_path):
    other = tmp_path / "b" / "elsewhere" / "csrc"
    shutil.copytree(csrc, other)
    for cuda in (False, True):
        assert loader.source_hash(csrc, cuda) == loader.source_hash(other, cuda) == loader.source_hash(REPO / "csrc", cuda)
    assert loader.build_key(False, csrc) == loader.build_key(False, other)
    assert len(src_part(loader.build_key(False, csrc))) == len("src") + 10
    assert loader.build_key(False, csrc).isidentifier()  # it is also the library's name


@pytest.mark.parametrize("relpath", ["culnig.cpp", "attribution.h", "cuda/attribution_cuda.cu", "cpu/attribution_cpu_kernel.inc",
                                     "messages.def"])
def test_one_changed_byte_changes_the_name(csrc, relpath):
    before_cpu, before_cuda = loader.build_key(False, csrc), loader.source_hash(csrc, True)
    path = csrc / relpath
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one byte
    path.write_bytes(bytes(data))
    assert loader.source_hash(csrc, True) != before_cuda
    after = loader.build_key(False, csrc)
    assert after != before_cpu and src_part(after) != src_part(before_cpu)
    assert after.replace(src_part(after), "") == before_cpu.replace(src_part(before_cpu), "")  # only the hash moved


def test_a_new_or_renamed_source_file_changes_the_name(csrc):
    before = loader.source_hash(csrc, False)
    (csrc / "cpu" / "extra.h").write_text("// new\n")
    added = loader.source_hash(csrc, False)
    assert added != before
    (csrc / "cpu" / "extra.h").rename(csrc / "cpu" / "extra2.h")
    assert loader.source_hash(csrc, False) not in (before, added)
    (csrc / "cpu" / "extra2.h").unlink()
    (csrc / "notes.txt").write_text("not a source")  # other files do not count
    assert loader.source_hash(csrc, False) == before


def test_the_flags_are_in_the_hash(csrc, monkeypatch):
    cpu, cuda = loader.source_hash(csrc, False), loader.source_hash(csrc, True)
    assert cpu != cuda  # the nvcc flags count only for a CUDA build
    monkeypatch.setattr(loader, "NVCC_FLAGS", ["-O2"])
    assert loader.source_hash(csrc, True) != cuda and loader.source_hash(csrc, False) == cpu
    monkeypatch.setattr(loader, "cxx_flags", lambda: ["-O2", "-fopenmp"])
    assert loader.source_hash(csrc, False) != cpu


def test_the_jit_build_folder_uses_the_hashed_name(csrc, monkeypatch, tmp_path):
    seen = {}

    def fake_load(**kw):
        seen.update(kw)
        raise RuntimeError("no compiler in this test")

    from torch.utils import cpp_extension

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setattr(cpp_extension, "load", fake_load)
    result = loader._jit_build(csrc, with_cuda=False)
    assert result.kind == "none"
    assert seen["name"] == loader.build_key(False, csrc)
    assert Path(seen["build_directory"]) == tmp_path / "ext" / seen["name"]
    assert "src" + loader.source_hash(csrc, False) in seen["name"]
