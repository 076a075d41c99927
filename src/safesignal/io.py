"""The one atomic writer and the one JSONL reader.

Rules every save in safesignal follows:
- a file or directory is written beside its target and renamed into place only when complete,
  so a crash never leaves a half-written file where a good one was;
- a directory save replaces only a directory this project wrote (the caller says how to
  recognise one); any other non-empty directory is refused with an error naming it, and
  nothing the user put there is removed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

MAX_REPORTED = 20


class DataError(ValueError):
    """One or more malformed records; `problems` lists "file:line: field: message" strings."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        super().__init__(f"{len(problems)} malformed record(s):\n  {shown}{more}")


class NotOursError(FileExistsError):
    """A save was asked to replace a non-empty directory safesignal did not write."""


# ---------------------------------------------------------------------------------- files
def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[TextIO]:
    """A text handle on a temporary file beside `path`, renamed onto `path` when the block
    ends without an error (and removed when it raises): files too big to build in memory
    are streamed through it and still appear whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            yield handle
        # mkstemp creates the file 0600; a results file or report is meant to be read like any
        # other file the user writes, so give it the mode their umask gives new files.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same directory and a rename."""
    with atomic_writer(path) as handle:
        handle.write(text)


def finite_json(obj):
    """`obj` with every NaN / infinity replaced by None: JSON has no NaN, and the parsers that
    read results files (jq, browsers, CI scripts) reject Python's `NaN` token."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(finite_json(obj), indent=indent, ensure_ascii=False, allow_nan=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """One JSON object per line, written atomically (streamed: `records` may be a generator)."""
    with atomic_writer(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------------- JSONL
def iter_jsonl_lines(lines: str | Iterable[str], name: str) -> Iterator[tuple[str, dict | str]]:
    """(where, object) per non-blank line of `lines` (a text, or an open file read line by
    line so a big file is never held whole); `where` is "name:line".

    A line that is not a JSON object yields (where, problem message) instead, so callers can
    report every bad line at once rather than stopping at the first.
    """
    for number, line in enumerate(lines.splitlines() if isinstance(lines, str) else lines, start=1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            yield where, f"invalid JSON ({err.msg} at column {err.colno})"
            continue
        if not isinstance(obj, dict):
            yield where, f"expected a JSON object, got {type(obj).__name__}"
            continue
        yield where, obj


def read_unique_jsonl(path: Path, parse: Callable[[dict, str], dict], key: str) -> tuple[list[dict], dict[str, str]]:
    """Records of a small, hand-written JSONL resource, each through `parse(obj, where)`, whose
    field `key` is unique; also key -> "file:line". Stops at the first problem with a ValueError
    naming the file and line (these files are ours: one fix at a time is enough)."""
    records, where_of = [], {}
    for where, obj in iter_jsonl_lines(Path(path).read_text(encoding="utf-8"), str(path)):
        if isinstance(obj, str):  # not a JSON object: the reader's own message
            raise ValueError(f"{where}: {obj}")
        record = parse(obj, where)
        if record[key] in where_of:
            raise ValueError(f"{where}: duplicate {key} {record[key]!r} (first at {where_of[record[key]]})")
        where_of[record[key]] = where
        records.append(record)
    return records, where_of


def read_jsonl(path: str | os.PathLike, parse: Callable[[dict, str], object] | None = None,
               *, name: str | None = None) -> list:
    """Every record of a JSONL file, each passed through `parse(obj, where)`.

    Without `parse` the result is a list of (where, object) pairs. Malformed lines and records
    (`parse` raising DataError) are collected and raised together as one DataError, so one
    run reports every problem of a file.
    """
    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: file not found")
    parse = parse or (lambda obj, where: (where, obj))
    out, problems = [], []
    with path.open(encoding="utf-8") as handle:
        for where, obj in iter_jsonl_lines(handle, name):
            if isinstance(obj, str):
                problems.append(f"{where}: {obj}")
                continue
            try:
                out.append(parse(obj, where))
            except DataError as err:
                problems.extend(err.problems)
    if problems:
        raise DataError(problems)
    return out


# ---------------------------------------------------------------------------------- directories
def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def refuse_unless_ours(path: str | os.PathLike, is_ours: Callable[[Path], bool], what: str) -> None:
    """Raise NotOursError naming `path` unless it is missing, an empty directory or one of ours
    (`is_ours`). Reads only: callers check before spending work, then write."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotOursError(f"{path}: exists and is not a directory; refusing to write a {what} there")
    if path.is_dir() and not is_empty_dir(path) and not is_ours(path):
        raise NotOursError(
            f"{path}: directory is not empty and does not hold a safesignal {what}; refusing to write "
            f"there (nothing was changed). Choose another directory or empty it yourself."
        )


def claim_directory(path: str | os.PathLike, is_ours: Callable[[Path], bool], what: str) -> Path:
    """Make sure `path` is missing, empty or one of ours (`is_ours`); create it. Never deletes.

    `what` names the kind of directory in the error ("checkpoint", "data directory", ...).
    """
    refuse_unless_ours(path, is_ours, what)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _backup_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def replace_directory(target: str | os.PathLike, fill: Callable[[Path], None], *,
                      is_ours: Callable[[Path], bool], what: str) -> Path:
    """Write a directory atomically: `fill(staging)` writes every file, then it is swapped in.

    `target` may be missing, empty, or a previous directory of ours (`is_ours`), which is
    replaced; anything else is refused before any work. Between the two renames the old copy
    lives at `.<name>.old`; `recover_interrupted_replace` puts it back after a crash there.
    """
    staging = staging_directory(target, is_ours, what)
    try:
        fill(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return swap_in_directory(staging, target, is_ours)


def staging_directory(target: str | os.PathLike, is_ours: Callable[[Path], bool], what: str) -> Path:
    """A fresh hidden directory beside `target` to fill, after checking `target` may be replaced.
    (`replace_directory` in two halves, for writers that fill it from several processes.)"""
    target = Path(target)
    refuse_unless_ours(target, is_ours, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))


def swap_in_directory(staging: Path, target: str | os.PathLike, is_ours: Callable[[Path], bool]) -> Path:
    """Put a filled `staging` directory in `target`'s place (the previous copy goes only once
    the new one is there)."""
    target = Path(target)
    backup = _backup_path(target)
    try:
        if target.exists():
            if backup.exists() and is_ours(backup):
                shutil.rmtree(backup)
            os.replace(target, backup)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if backup.exists() and (is_ours(backup) or is_empty_dir(backup)):
        shutil.rmtree(backup, ignore_errors=True)  # the previous copy: ours, or the empty directory it replaced
    return target


def recover_interrupted_replace(target: str | os.PathLike, is_ours: Callable[[Path], bool]) -> None:
    """Restore `.<name>.old` when a crash fell between the two renames of `replace_directory`."""
    target = Path(target)
    backup = _backup_path(target)
    if not target.exists() and backup.is_dir() and is_ours(backup):
        warnings.warn(f"{target}: restoring the copy left at {backup} by an interrupted save", stacklevel=3)
        os.replace(backup, target)


__all__ = [
    "DataError", "NotOursError", "atomic_write_json", "atomic_write_text", "atomic_writer", "claim_directory", "refuse_unless_ours",
    "iter_jsonl_lines", "read_jsonl", "recover_interrupted_replace", "replace_directory", "staging_directory",
    "swap_in_directory", "write_jsonl",
]
