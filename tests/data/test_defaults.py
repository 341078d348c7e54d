"""``auto`` data: BLEnD rebuilt from raw annotations when a folder is found, the builtin set otherwise."""
from __future__ import annotations

from pathlib import Path

from culnig_ext.data import defaults

from tests.shared_data import BLEND as SHARED_BLEND, needs_shared_data


def test_auto_finds_the_blend_folder_named_by_the_environment(tmp_path, monkeypatch):
    root = tmp_path / "myblend"
    (root / "annotations").mkdir(parents=True)
    (root / "questions").mkdir()
    (tmp_path / "countryrc").mkdir()
    (tmp_path / "countryrc" / "data.json").write_text("[]")
    monkeypatch.setenv("CULNIG_BLEND_DIR", str(root))
    monkeypatch.delenv("CULNIG_COUNTRYRC", raising=False)
    got = defaults.resolve("auto", "auto", "auto")
    assert got.data == str(root.resolve())
    assert got.crc == f"countryrc:{(tmp_path / 'countryrc' / 'data.json').resolve()}@0-24"
    assert got.crc_test.endswith("data.json@25-49")
    assert "BLEnD rebuilt from the raw annotations" in got.note and str(root.resolve()) in got.note
    # explicit sources are kept as given
    kept = defaults.resolve("builtin:cultural", "builtin:countryrc", "x.json")
    assert (kept.data, kept.crc, kept.crc_test, kept.note) == ("builtin:cultural", "builtin:countryrc", "x.json", "")


def test_auto_falls_back_to_the_builtin_set_and_says_so(monkeypatch, tmp_path):
    monkeypatch.delenv("CULNIG_BLEND_DIR", raising=False)
    monkeypatch.delenv("CULNIG_COUNTRYRC", raising=False)
    monkeypatch.setattr(defaults, "_candidates", lambda: [tmp_path / "none"])
    got = defaults.resolve("auto", "auto", "auto")
    assert (got.data, got.crc, got.crc_test) == ("builtin:cultural", "builtin:countryrc", "builtin:countryrc-test")
    assert "offline fallback" in got.note


@needs_shared_data
def test_auto_finds_the_shared_reference_copy(monkeypatch):
    monkeypatch.delenv("CULNIG_BLEND_DIR", raising=False)
    assert SHARED_BLEND.is_dir(), "the repository's tests read ../shared/data/blend"
    assert defaults.find_blend_root() == SHARED_BLEND.resolve()
    assert defaults.resolve("auto", "auto", "auto").crc.endswith("countryrc/data.json@0-24")


def test_non_cultural_sources():
    for source in ("builtin:general", "commonsenseqa", "commonsenseqa:x.jsonl", "qnli", "mrpc:f.tsv",
                   "tau/commonsense_qa"):
        assert defaults.is_non_cultural(source), source
    for source in ("builtin:cultural", "../shared/data/blend", "culturalbench", "countryrc:x.json@0-3"):
        assert not defaults.is_non_cultural(source), source
