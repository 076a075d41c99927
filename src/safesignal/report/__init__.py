"""`safesignal report`: report.html (tables and inline SVG plots) and report.md from a results.json.

    from safesignal.report import load_results, write_report
    html_path, md_path = write_report(load_results("results.json"), "out/")
"""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_text
from .html import render_html
from .markdown import render_markdown
from .results import ResultsFormatError, check_format, load_results
from .sections import build_document

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"


def write_report(results: dict, out_dir, *, source: str = "results") -> tuple[Path, Path]:
    """Write report.html and report.md for `results` into `out_dir`; returns their paths.
    `source` names the results in a format error (load_results passes the file name)."""
    document = build_document(check_format(results, source))
    out_dir = Path(out_dir)
    html_path, md_path = out_dir / HTML_NAME, out_dir / MARKDOWN_NAME
    atomic_write_text(html_path, render_html(document))
    atomic_write_text(md_path, render_markdown(document))
    return html_path, md_path


__all__ = ["ResultsFormatError", "load_results", "write_report"]
