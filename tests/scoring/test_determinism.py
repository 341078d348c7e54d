"""``scoring.determinism``: torch's deterministic algorithms on inside the block and restored after (also after an
exception, and when they were on already); ``culnig score --deterministic`` writes the same scores as without (the
CPU path is deterministic already) and records the mode in the table, so that resuming across modes is refused;
``culnig run --deterministic`` is a RunConfig field like the others."""
from __future__ import annotations

import os

import pytest
import torch

from culnig_ext.cli import main as cli
from culnig_ext.scoring.determinism import CUBLAS_WORKSPACE, deterministic
from culnig_ext.scoring.table import ScoreTable
from culnig_ext.studies.config import RunConfig
from tests.cli.test_cli import GOOD_ITEMS, write_items
from tests.studies.test_pipeline import save_tiny_model


@pytest.fixture
def no_cublas_env(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_on_inside_and_restored_after(no_cublas_env):
    with deterministic():
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_restored_after_an_exception_and_off_changes_nothing(no_cublas_env):
    with pytest.raises(RuntimeError, match="boom"):
        with deterministic():
            raise RuntimeError("boom")
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    with deterministic(False):
        assert not torch.are_deterministic_algorithms_enabled()
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_a_users_settings_are_kept(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        with deterministic():
            assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
            assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.use_deterministic_algorithms(False)


def test_score_deterministic_same_scores_mode_recorded(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model")
    data = write_items(tmp_path / "items.jsonl", GOOD_ITEMS)
    common = ["score", "--model", str(model), "--data", str(data), "--format", "cloze", "--no-progress",
              "--checkpoint", "none"]
    plain, det = tmp_path / "plain.safetensors", tmp_path / "det.safetensors"
    assert cli.main([*common, "--out", str(plain)]) == 0
    assert cli.main([*common, "--deterministic", "--out", str(det)]) == 0
    capsys.readouterr()
    a, b = ScoreTable.load(plain), ScoreTable.load(det)
    assert a.sites == b.sites and all(torch.equal(a[s], b[s]) for s in a.sites)
    assert torch.equal(a.prob_sums, b.prob_sums)
    assert b.metadata["deterministic"] == "true" and "deterministic" not in a.metadata
    assert not torch.are_deterministic_algorithms_enabled()


def test_run_option():
    assert RunConfig().deterministic is False
    assert RunConfig(deterministic=True).deterministic is True


def test_run_deterministic_gives_the_same_results(tmp_path, capsys):
    """The whole pipeline under torch's deterministic algorithms (no CPU op refuses them) equals the plain run."""
    import json

    from tests.cli.test_run_output import argv

    model = save_tiny_model(tmp_path / "model")
    assert cli.main(argv(model, tmp_path / "plain", "--no-progress")) == 0
    assert cli.main(argv(model, tmp_path / "det", "--no-progress", "--deterministic")) == 0
    capsys.readouterr()
    a, b = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("plain", "det"))
    assert a["rows"] == b["rows"] and a["n_neurons"] == b["n_neurons"] and a["verdict"] == b["verdict"]
    assert json.loads((tmp_path / "det" / "config.json").read_text())["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled()
