"""_utils.lazy: a package's public names imported from their modules on first use."""
from __future__ import annotations

import sys
import types

import pytest

from culnig_ext._utils.lazy import lazy_exports


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package ``lazypkg`` on disk with module ``mod`` (function ``f``, value ``X``) and ``other``."""
    root = tmp_path / "lazypkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "mod.py").write_text("X = 41\n\ndef f():\n    return 'f of mod'\n")
    (root / "other.py").write_text("NAME = 'other'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lazypkg"
    for name in [n for n in sys.modules if n == "lazypkg" or n.startswith("lazypkg.")]:
        del sys.modules[name]


def test_names_come_from_their_modules_on_first_use_and_are_cached(package):
    import lazypkg

    getattr_, dir_ = lazy_exports(package, {"answer": "mod:X", "other": "other:", "g": "mod:f"})
    assert "lazypkg.mod" not in sys.modules  # nothing imported yet
    assert getattr_("answer") == 41
    assert "lazypkg.mod" in sys.modules and lazypkg.answer == 41  # set on the package: the next lookup is direct
    assert getattr_("g")() == "f of mod"  # "module:attr" exports attr under another name
    other = getattr_("other")  # "module:" exports the module itself
    assert isinstance(other, types.ModuleType) and other.NAME == "other" and lazypkg.other is other
    assert dir_() == ["answer", "g", "other"]


def test_module_colon_nothing_exports_the_module_and_a_bare_name_its_namesake(package):
    getattr_, _ = lazy_exports(package, {"mod": "mod:", "X": "mod"})
    assert isinstance(getattr_("mod"), types.ModuleType)
    assert getattr_("X") == 41  # no colon: the attribute of the same name


def test_an_unknown_name_is_an_attribute_error_naming_the_package(package):
    getattr_, _ = lazy_exports(package, {"answer": "mod:X"})
    with pytest.raises(AttributeError, match=r"^module 'lazypkg' has no attribute 'nope'$"):
        getattr_("nope")
