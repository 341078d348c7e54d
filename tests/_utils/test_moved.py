"""_utils.moved: the old module paths give the module at its new path, with one FutureWarning naming it."""
from __future__ import annotations

import importlib
import sys
import warnings

import pytest

from culnig_ext._utils import moved


@pytest.fixture
def fresh(monkeypatch):
    """Forget that ``culnig_ext.scorer`` / ``culnig_ext.select`` were imported or warned about."""
    for old in ("scorer", "select"):
        monkeypatch.delitem(sys.modules, f"culnig_ext.{old}", raising=False)
    monkeypatch.setattr(moved, "_warned", set())


def test_an_old_path_is_the_new_module_with_one_warning_naming_it(fresh):
    new = importlib.import_module("culnig_ext.scoring.scorer")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("culnig_ext.scorer")
        sys.modules.pop("culnig_ext.scorer")
        again = importlib.import_module("culnig_ext.scorer")  # a second import: no second warning
    assert old is new and again is new
    assert [(w.category, str(w.message)) for w in caught] == [
        (FutureWarning, "culnig_ext.scorer has moved to culnig_ext.scoring.scorer; the old path works for this "
                        "release only")]


def test_the_finder_answers_only_for_moved_names_under_the_package():
    finder = moved._Alias()
    spec = finder.find_spec("culnig_ext.select")
    assert spec is not None and spec.name == "culnig_ext.select" and spec.loader is finder
    assert finder.find_spec("culnig_ext.no_such_module") is None
    assert finder.find_spec("other_package.select") is None
    assert finder.find_spec("culnig_ext") is None
    assert moved.MOVED["select"] == "selection.culnig" and moved.MOVED["checkpoint"] == "scoring.resume"


def test_install_puts_one_finder_on_the_meta_path(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, moved._Alias)])
    moved.install()
    moved.install()
    assert sum(isinstance(f, moved._Alias) for f in sys.meta_path) == 1
