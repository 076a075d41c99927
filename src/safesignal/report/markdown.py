"""report.md: the same tables as report.html, as GitHub-flavoured Markdown (figures stay in the HTML)."""

from __future__ import annotations

from .document import Document, Figure, Section, Table, as_cell


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _cell(value) -> str:
    cell = as_cell(value)
    return _escape(cell.main + (f" · {cell.sub}" if cell.sub else ""))


def _table(table: Table) -> str:
    lines = [f"*{_escape(table.caption)}*", ""] if table.caption else []
    lines.append("| " + " | ".join(_cell(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _figure_note(figure: Figure) -> str:
    return f"*Figure in report.html{': ' + figure.caption if figure.caption else ''}*"


def _block(block) -> str:
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure_note(block)
    if isinstance(block, list):
        return f"*{len(block)} figures in report.html*" if block else ""
    return str(block)


def _section(section: Section) -> str:
    return "\n\n".join([f"## {section.title}"] + [text for text in map(_block, section.blocks) if text])


def render_markdown(document: Document) -> str:
    header = "\n".join(f"- **{label}:** {_escape(value)}" for label, value in document.header)
    return "\n\n".join([f"# {document.title}", header] + [_section(s) for s in document.sections]) + "\n"
