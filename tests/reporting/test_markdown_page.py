"""report.html of the Markdown pages (compare, validate, finetune): the blocks it renders and the inline figure."""
from __future__ import annotations

import base64
import re

from culnig_ext.reporting.markdown_page import markdown_html, write_markdown_page
from culnig_ext.reporting.plots import png_bytes

PAGE = """# Comparison: <CULNIG> and LAPE

Two lines of
one paragraph with **bold** and `code`.

| method | neurons | Jaccard |
|---|---:|---:|
| CULNIG | 12 | 0.50 |
| LAPE | 9 | −0.25 |

- first item
  continued
- second item

![the layers](layers.png)
![gone](missing.png)
"""


def test_blocks(tmp_path):
    body = markdown_html(PAGE, tmp_path)
    assert "<h1>Comparison: &lt;CULNIG&gt; and LAPE</h1>" in body
    assert "<p>Two lines of one paragraph with <b>bold</b> and <code>code</code>.</p>" in body
    assert ("<table class='sortable'><thead><tr><th>method</th><th>neurons</th><th>Jaccard</th></tr></thead><tbody>"
            "<tr><td>CULNIG</td><td>12</td><td>0.50</td></tr><tr><td>LAPE</td><td>9</td><td>−0.25</td></tr></tbody>"
            "</table>") in body
    assert "<ul><li>first item continued</li><li>second item</li></ul>" in body
    assert "[figure missing.png not found]" in body and "[figure layers.png not found]" in body


def test_page_is_self_contained_with_its_figure(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    fig.add_subplot().plot([0, 1], [1, 0])
    png = png_bytes(fig)
    (tmp_path / "layers.png").write_bytes(png)
    (tmp_path / "compare.md").write_text(PAGE, encoding="utf-8")
    page = write_markdown_page(tmp_path, "compare.md").read_text(encoding="utf-8")
    assert "<title>Comparison: &lt;CULNIG&gt; and LAPE</title>" in page
    data = re.search(r"src='data:image/png;base64,([^']+)'", page).group(1)
    assert base64.b64decode(data) == png
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
