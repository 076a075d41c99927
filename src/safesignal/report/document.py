"""The report as data: sections of paragraphs, tables and figures, before any markup.

Both renderers (html.py, markdown.py) walk the same Document, so report.html and report.md
hold the same tables by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Cell:
    """A table cell: the main text and an optional second, smaller line (e.g. the keyword ASR)."""

    main: str
    sub: str = ""



@dataclass
class Table:
    columns: list
    rows: list[list]
    caption: str = ""
    # rows whose index is here start a new group (a thin rule above them in HTML)
    group_starts: set[int] = field(default_factory=set)


@dataclass
class Figure:
    svg: str
    caption: str = ""


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list = field(default_factory=list)  # str (a paragraph), Table, Figure, or list[Figure] (side by side)
    collapsed: bool = False  # long detail the reader opens on demand


@dataclass
class Document:
    title: str
    header: list[tuple[str, str]]  # (label, value) lines under the title
    sections: list[Section]


def as_cell(value) -> Cell:
    return value if isinstance(value, Cell) else Cell(str(value))
