"""``report.html`` for the studies that write their own Markdown page (``culnig compare``, ``culnig validate``,
``culnig finetune``): the page's Markdown as one self-contained HTML file beside it, its tables sortable by a click
on a column title and its figures (the PNGs it references) inline as data URIs.

The Markdown these pages use is small: headings, paragraphs, pipe tables, bullet lists, images, ``**bold**`` and
``code``; anything else shows as text.
"""
from __future__ import annotations

import base64
import html
import os
import re
from importlib import resources
from pathlib import Path

from culnig_ext._utils.atomic import atomic_write_text
from culnig_ext.reporting.explorer import HTML_FILE, inline_html, table_html

_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_SEPARATOR = re.compile(r"\|[\s:|-]+\|")


def _image(alt: str, name: str, folder: Path) -> str:
    path = folder / name
    if not path.is_file() or path.suffix.lower() != ".png":
        return f"<p class='missing'>[figure {html.escape(name)} not found]</p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


def markdown_html(text: str, folder: Path) -> str:
    """The HTML body of a Markdown page; images are read from ``folder``."""
    out: list[str] = []
    lines = text.splitlines()
    i, para, items = 0, [], []

    def flush():
        if para:
            out.append(f"<p>{inline_html(' '.join(para))}</p>")
            para.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{inline_html(x)}</li>" for x in items) + "</ul>")
            items.clear()

    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("|") and i + 1 < len(lines) and _SEPARATOR.fullmatch(lines[i + 1].strip()):
            flush()
            header = [c.strip() for c in line.strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out.append(table_html(header, rows).replace("<table>", "<table class='sortable'>", 1))
            continue
        heading = re.match(r"(#{1,4})\s+(.*)", line)
        image = _IMAGE.fullmatch(line)
        if heading:
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{inline_html(heading.group(2))}</h{level}>")
        elif image:
            flush()
            out.append(_image(image.group(1), image.group(2), folder))
        elif line.startswith(("- ", "* ")):
            if para:
                flush()
            items.append(line[2:])
        elif not line:
            flush()
        elif items:
            items[-1] += " " + line
        else:
            para.append(line)
        i += 1
    flush()
    return "\n".join(out)


def write_markdown_page(folder: str | os.PathLike, markdown_file: str, title: str | None = None) -> Path:
    """Write ``folder/report.html`` from ``folder/markdown_file`` atomically; returns its path."""
    folder = Path(folder)
    text = (folder / markdown_file).read_text(encoding="utf-8")
    first = next((ln[2:].strip() for ln in text.splitlines() if ln.startswith("# ")), markdown_file)
    assets = resources.files("culnig_ext.reporting").joinpath("assets")
    page = "\n".join([
        "<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title or first)}</title>",
        f"<style>{assets.joinpath('explorer.css').read_text(encoding='utf-8')}</style>", "</head><body>",
        f"<p class='missing'>The page of {html.escape(markdown_file)} (tables sortable: click a column title).</p>",
        markdown_html(text, folder), f"<script>{assets.joinpath('page.js').read_text(encoding='utf-8')}</script>",
        "</body></html>", ""])
    return atomic_write_text(folder / HTML_FILE, page)
