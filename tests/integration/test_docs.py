"""The README and the documentation: every relative link and anchor resolves, the README stays short, keeps the two
commands and the Layout (one line per floor of the house)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.test_house import FLOORS

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> str:
    """``text`` without its fenced code blocks and inline code (links there are not links)."""
    out, inside = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            out.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(out)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (word characters, spaces and hyphens kept),
    spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link's text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen = set(), {}
    inside = False
    for line in page.read_text().splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match and not inside:
            base = slug(match.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    return LINK.findall(prose(page.read_text()))


def test_the_slug_is_githubs():
    assert slug("`culnig run`: the quick and the full study") == "culnig-run-the-quick-and-the-full-study"
    assert slug("The paper's protocol and its generalisation findings") == \
        "the-papers-protocol-and-its-generalisation-findings"
    assert slug("Changelog: modules moved in 0.1.0") == "changelog-modules-moved-in-010"


def test_the_checker_finds_a_broken_link(tmp_path):
    page = tmp_path / "a.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nope) `[code](#nope)`\n\n```\n[x](missing.md)\n```\n")
    assert links(page) == ["#title", "#nope"] and anchors(page) == {"title"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ... are not checked here
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(REPO)}")
    assert broken == []


def test_every_doc_page_is_linked_from_the_readme_or_the_index():
    linked = {(REPO / p).resolve() for p in links(REPO / "README.md")}
    linked |= {(REPO / "docs" / p.partition("#")[0]).resolve() for p in links(REPO / "docs" / "README.md")}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked and p.name != "README.md"] == []


def test_the_readme_is_short_and_keeps_the_two_commands_and_the_layout():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 260
    code = [line.strip() for line in text.splitlines()]
    assert "bash scripts/setup.sh && .venv/bin/culnig run" in code
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in code
    layout = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [re.match(r"^\| `culnig_ext/(\w+)/` \|", line) for line in layout.splitlines()]
    assert [m.group(1) for m in rows if m] == FLOORS  # one line per floor, lowest first
