"""report.html: one self-contained page (inline CSS and SVG; no scripts, fonts or links out)."""

from __future__ import annotations

import re
from html import escape

from .document import Document, Figure, Section, Table, as_cell

NUMERIC = re.compile(r"^(?:—|-?\d)")  # cells that hold a number align right, so digits line up

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1d;
       margin: 0 auto; padding: 24px 32px 64px; max-width: 1240px; font-size: 14px; line-height: 1.45; }
h1 { font-size: 24px; margin: 0 0 12px; }
h2 { font-size: 18px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid #e2e2e2; }
dl.header { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0 0 16px; }
dl.header dt { color: #555; font-weight: 600; }
dl.header dd { margin: 0; overflow-wrap: anywhere; }
nav { font-size: 13px; margin: 8px 0 0; display: flex; flex-wrap: wrap; gap: 4px 16px; }
nav a { color: #0b5cad; text-decoration: none; white-space: nowrap; }
.scroll { overflow-x: auto; margin: 8px 0 14px; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
p.caption { color: #444; font-size: 13px; margin: 10px 0 4px; }
th, td { padding: 5px 10px; border-bottom: 1px solid #e6e6e6; vertical-align: top; text-align: left; }
th { background: #f4f5f7; font-weight: 600; border-bottom: 2px solid #d0d0d0; }
td.num { text-align: right; white-space: nowrap; }
tr.group td { border-top: 2px solid #c9c9c9; }
.sub { display: block; color: #666; font-size: 12px; font-weight: normal; }
.figures { display: flex; flex-wrap: wrap; gap: 18px; }
figure { margin: 10px 0 16px; max-width: 100%; }
figure svg { max-width: 100%; height: auto; }
figcaption { color: #444; font-size: 13px; max-width: 900px; }
details > summary { cursor: pointer; font-size: 18px; font-weight: 600; margin: 36px 0 10px; }
p { max-width: 1000px; }
"""


def _cell(value, tag: str) -> str:
    cell = as_cell(value)
    sub = f'<span class="sub">{escape(cell.sub)}</span>' if cell.sub else ""
    css = ' class="num"' if tag == "td" and NUMERIC.match(cell.main) else ""
    return f"<{tag}{css}>{escape(cell.main)}{sub}</{tag}>"


def _table(table: Table) -> str:
    head = "".join(_cell(c, "th") for c in table.columns)
    rows = []
    for index, row in enumerate(table.rows):
        css = ' class="group"' if index in table.group_starts else ""
        rows.append(f"<tr{css}>" + "".join(_cell(c, "td") for c in row) + "</tr>")
    # The caption sits above the table, not in a <caption>, which would wrap to the table's width.
    caption = f'<p class="caption">{escape(table.caption)}</p>' if table.caption else ""
    return f'{caption}<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(rows) + \
        "\n</tbody></table></div>"


def _figure(figure: Figure) -> str:
    caption = f"<figcaption>{escape(figure.caption)}</figcaption>" if figure.caption else ""
    return f"<figure>{figure.svg}{caption}</figure>"


def _block(block) -> str:
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block)
    if isinstance(block, list):
        return '<div class="figures">' + "".join(_figure(f) for f in block) + "</div>"
    return f"<p>{escape(str(block))}</p>"


def _section(section: Section) -> str:
    body = "\n".join(_block(b) for b in section.blocks)
    if section.collapsed:
        return f'<details id="{section.anchor}"><summary>{escape(section.title)}</summary>\n{body}\n</details>'
    return f'<section id="{section.anchor}"><h2>{escape(section.title)}</h2>\n{body}\n</section>'


def render_html(document: Document) -> str:
    header = "".join(f"<dt>{escape(label)}</dt><dd>{escape(value)}</dd>" for label, value in document.header)
    nav = "".join(f'<a href="#{s.anchor}">{escape(s.title)}</a>' for s in document.sections)
    sections = "\n".join(_section(s) for s in document.sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(document.title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{escape(document.title)}</h1>\n<dl class=\"header\">{header}</dl>\n<nav>{nav}</nav>\n"
            f"{sections}\n</body>\n</html>\n")
