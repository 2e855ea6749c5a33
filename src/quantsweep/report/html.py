"""The single-file HTML report: one card per target first, then the tables and the plots inline."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:0 12px;color:#222}"
    "table{border-collapse:collapse;font-size:13px;margin:8px 0}"
    "td,th{border:1px solid #ccc;padding:3px 6px}th{background:#f3f3f3}"
    "tr.recommended td{background:#fff4d6;font-weight:bold}"
    ".cards{display:flex;flex-wrap:wrap;gap:12px}"
    ".card{flex:1 1 340px;border:1px solid #bbb;border-radius:8px;padding:4px 14px;background:#fafcff}"
    ".card h3{margin:8px 0 4px}.card ul{padding-left:18px;margin:4px 0}.card li{margin:3px 0}"
    "code{background:#eee;padding:0 3px;border-radius:3px;word-break:break-all}"
    "img{max-width:100%}figure{margin:16px 0}"
)
# lets a headless browser confirm what rendered
_SCRIPT = (
    "<script>window.addEventListener('load',()=>{const ok=[...document.images].filter("
    "i=>i.complete&&i.naturalWidth>0).length;document.body.dataset.imagesRendered=ok;"
    "document.body.dataset.tableRows=document.querySelectorAll('tr').length;"
    "document.body.dataset.cards=document.querySelectorAll('.card').length;});</script>"
)


def _inline(text: str) -> str:
    """Markdown's ``**bold**`` and `` `code` `` as HTML, everything else escaped."""
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _table(rows: list[str]) -> str:
    out = []
    for i, line in enumerate(rows):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        tag = "th" if i == 0 else "td"
        css = ' class="recommended"' if "(recommended)" in line else ""
        out.append(f"<tr{css}>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
    return "<table>" + "".join(out) + "</table>"


def markdown_to_html(lines: list[str]) -> str:
    """The small Markdown subset the summary uses: headings, lists, tables, paragraphs."""
    body, table, items = [], [], []

    def flush() -> None:
        if table:
            body.append(_table(table))
            table.clear()
        if items:
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    for line in lines:
        if line.startswith("|"):
            if not set(line.replace(" ", "")) <= set("|-"):
                table.append(line)
            continue
        if line.startswith("- "):
            items.append(line[2:])
            continue
        flush()
        heading = re.match(r"(#{1,3}) (.*)", line)
        if heading:
            level = len(heading.group(1))
            body.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif line and not line.startswith("!["):
            body.append(f"<p>{_inline(line)}</p>")
    flush()
    return "".join(body)


def _cards(lines: list[str]) -> str:
    """Each ``### target`` block of the recommendations as a card."""
    blocks: list[list[str]] = []
    head = []
    for line in lines:
        if line.startswith("### "):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
        else:
            head.append(line)
    cards = "".join(f'<div class="card">{markdown_to_html(block)}</div>' for block in blocks)
    return markdown_to_html(head) + f'<div class="cards">{cards}</div>'


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def render_html(cards: list[str], body: list[str], plots: list[Path]) -> str:
    """The report page: recommendation cards, per-target tables, then every plot embedded."""
    figures = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,{_b64(p)}">'
        f"<figcaption>{p.stem}</figcaption></figure>"
        for p in plots
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>quantsweep report</title>"
        f"<style>{_STYLE}</style>{_SCRIPT}</head><body>{_cards(cards)}{markdown_to_html(body)}"
        f"{figures}</body></html>"
    )
