"""SAFESIGNAL_HOME: where converted base models, data and trained checkpoints live.

Checkpoints refer to their base model relative to this directory (or by registry name), never
by an absolute path, so a home directory can be moved or shared as a whole.
"""

from __future__ import annotations

import os
from pathlib import Path


def safesignal_home() -> Path:
    explicit = os.environ.get("SAFESIGNAL_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return (Path(cache) / "safesignal").resolve()


def relative_to_home(path: str | os.PathLike) -> str | None:
    """`path` relative to SAFESIGNAL_HOME, or None when it lies outside it."""
    try:
        return Path(path).resolve().relative_to(safesignal_home()).as_posix()
    except ValueError:
        return None
