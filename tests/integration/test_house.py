"""The house: no import cycles (imports inside functions included), each stage imports only the stages below it,
no private name is imported across modules. Checked from the source with ``ast`` here, independently of
import-linter (which CI also runs, ``lint-imports``, with the contract in pyproject.toml)."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "culnig_ext"

# The floors, lowest first, as the README's Layout lists them (a module may import its own floor or lower ones).
FLOORS = ["_utils", "kernels", "models", "data", "scoring", "selection", "intervention", "stats", "reporting",
          "studies", "cli"]


def modules(package: Path) -> dict[str, Path]:
    root = package.parent
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(mods: dict[str, Path]) -> list[tuple[str, str, str | None, int]]:
    """Every (importer, imported module, imported name or None, line) inside the package, at any depth."""
    top = next(iter(mods)).split(".")[0]
    edges = []
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                found = [(f"{target}.{a.name}", a.name) if f"{target}.{a.name}" in mods else (target, a.name)
                         for a in node.names]
            else:
                continue
            for target, name in found:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != mod and target.split(".")[0] == top:
                    edges.append((mod, target, name, node.lineno))
    return edges


def cycles(mods: dict[str, Path]) -> list[list[str]]:
    """Strongly connected components of more than one module (a package's re-exports of its children count)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for src, dst, _, _ in imports(mods):
        graph[src].add(dst)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 1 and parts[1] in FLOORS else None


def test_the_checker_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "toy"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text("")
    (pkg / "low" / "a.py").write_text("def f():\n    from toy.high import g\n")  # inside a function
    (pkg / "high.py").write_text("from toy.low.a import f\n")
    assert cycles(modules(pkg)) == [["toy.high", "toy.low.a"]]
    (pkg / "low" / "a.py").write_text("X = 1\n")
    assert cycles(modules(pkg)) == []


def test_no_import_cycles():
    assert cycles(modules(PACKAGE)) == []


def test_every_module_sits_on_a_floor():
    mods = modules(PACKAGE)
    loose = [m for m in mods if m.count(".") == 1 and m.split(".")[1] not in FLOORS and m != "culnig_ext._C"]
    assert loose == [], f"modules outside the floors: {loose}"
    assert len([m for m in mods if m.count(".") == 1]) == len(FLOORS)


def test_no_stage_imports_a_stage_above_it():
    back = [f"{src}:{line} imports {dst}" for src, dst, _, line in imports(modules(PACKAGE))
            if floor(src) is not None and floor(dst) is not None and floor(dst) > floor(src)]
    assert back == []


def test_no_private_name_is_imported_across_modules():
    mods = modules(PACKAGE)
    private = [f"{src}:{line} imports {dst}.{name}" for src, dst, name, line in imports(mods)
               if name and name.startswith("_") and not name.startswith("__") and f"{dst}.{name}" not in mods]
    assert private == []


def test_kernels_know_nothing_of_models():
    mods = modules(PACKAGE)
    for mod, path in mods.items():
        if mod.startswith("culnig_ext.kernels"):
            text = path.read_text()
            assert "transformers" not in text and "culnig_ext.models" not in text, mod


@pytest.mark.parametrize("name", ["_sample", "sample_items", "slug", "decoder_layers", "text_config",
                                  "_text_config", "expert_sites"])
def test_each_helper_is_defined_once(name):
    defined = [mod for mod, path in modules(PACKAGE).items()
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name]
    assert len(defined) <= 1, f"{name} defined in {defined}"
    if not name.startswith("_"):
        assert len(defined) == 1, f"{name} is expected once, found {defined}"
