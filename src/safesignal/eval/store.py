"""Resumable storage of the grid's cells: one JSONL file per (entry, results key).

A cell's cases are cut into a fixed list of batches before anything runs (the cut depends only
on the cases), and each finished batch is appended as one line and flushed. A killed run
therefore loses at most the batch in flight, and a resumed run recomputes exactly the batches
that are missing, with the same composition as the uninterrupted run would have had, so it
gives the same records even where batching changes the floating-point path (bf16).

The first line is a header with the cell's fingerprint (a hash of its cases and settings): a
cell written for other cases or settings is never mixed in: it is set aside beside the new one
(`<key>.stale-<fingerprint>.jsonl.old`) and the cell is recomputed. A file that is not an eval
cell is refused. A torn last line (a write cut
by the kill) is dropped with a warning and its batch recomputed.

A cell's settings name its model by path, so each entry's directory also records a digest of
the weights it was computed with (`model.json`): a directory written by other weights at the
same path (a retrained checkpoint) is set aside whole (`<entry>.stale-<digest>`), never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from ..io import DataError, atomic_write_json
from .generation import CaseRecord

CELL_FORMAT = "safesignal-eval-cell"
MODEL_FORMAT = "safesignal-eval-model"
MODEL_FILE = "model.json"
STALE = ".stale-"  # the infix of everything set aside (cells and entry directories)


def is_set_aside(path: Path) -> bool:
    return STALE in Path(path).name


def set_aside(path: Path, stem: str, tag: str, suffix: str = "") -> Path:
    """Move `path` (a cell file or an entry directory) to `<stem>.stale-<tag><suffix>` beside
    it, never over an earlier one set aside under the same tag (`.1`, `.2`, ... then)."""
    target, n = path.with_name(f"{stem}{STALE}{tag}{suffix}"), 1
    while target.exists():
        target, n = path.with_name(f"{stem}{STALE}{tag}.{n}{suffix}"), n + 1
    os.replace(path, target)
    return target


def fingerprint(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_digest(module) -> str:
    """sha256 of every parameter and buffer (name, dtype, shape, bytes), in name order: the
    weights as loaded, whatever the checkpoint's file layout."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def claim_entry_dir(directory: Path, weights: str) -> None:
    """Bind an entry's cell directory to the weights it is computed with. A directory that
    records other weights is moved aside whole (its cells and cached figures), not deleted."""
    directory = Path(directory)
    marker = directory / MODEL_FILE
    if marker.is_file():
        try:
            stored = json.loads(marker.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError([f"{marker}:{err.lineno}: invalid JSON ({err.msg})"]) from None
        if stored.get("format") != MODEL_FORMAT:
            raise DataError([f"{marker}: format: expected {MODEL_FORMAT!r}"])
        if stored.get("weights_sha256") == weights:
            return
        old = str(stored.get("weights_sha256"))[:16]
        stale = set_aside(directory, directory.name, old)
        warnings.warn(f"{directory}: computed with other weights ({old} != {weights[:16]}); kept as {stale.name}, "
                      "recomputing", stacklevel=2)
    atomic_write_json(marker, {"format": MODEL_FORMAT, "weights_sha256": weights})


def cell_lines(path: Path) -> tuple[list[str], bool]:
    """(complete lines, torn) of a cell file: every line a finished write ended with "\n"; text
    after the last one is a write the kill cut (torn), never read."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    return lines[:-1], bool(lines[-1].strip())


def cell_header(path: Path, complete: list[str]) -> dict:
    try:
        header = json.loads(complete[0])
    except json.JSONDecodeError as err:
        raise DataError([f"{path}:1: invalid header ({err.msg})"]) from None
    if not isinstance(header, dict) or header.get("format") != CELL_FORMAT:
        raise DataError([f"{path}:1: format: expected {CELL_FORMAT!r}, not an eval cell"])
    return header


def is_cell_file(path: Path) -> bool:
    """Whether `path` is one of our cell files: its first line is what `cell_header` accepts."""
    try:
        with open(path, encoding="utf-8") as f:
            cell_header(Path(path), [f.readline()])
    except (OSError, UnicodeDecodeError, DataError):
        return False
    return True


def cell_batches(path: Path, complete: list[str]):
    """(line number, batch index, records as dicts) for each batch line after the header."""
    for number, line in enumerate(complete[1:], start=2):
        try:
            obj = json.loads(line)
            batch, records = obj["batch"], obj["records"]
            # a batch's index, or a text key (a search's line per behaviour: behaviour, not position)
            if isinstance(batch, bool) or not isinstance(batch, (int, str)):
                raise TypeError(f"batch: expected an index or a key, got {batch!r}")
            if not isinstance(records, list):
                raise TypeError(f"records: expected a list, got {type(records).__name__}")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise DataError([f"{path}:{number}: malformed batch line ({err})"]) from None
        yield number, batch, records


class CellFile:
    """`record_class` is what a batch line holds: CaseRecord (generations), or any class with
    `to_json()` and `from_json(dict)` (an attack's per-behaviour search results)."""

    def __init__(self, path: Path, fingerprint: str, meta: dict | None = None, record_class=CaseRecord):
        self.path, self.fingerprint, self.meta = Path(path), fingerprint, meta or {}
        self.record_class = record_class
        self.done: dict[int | str, list] = {}
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        complete, torn = cell_lines(self.path)
        if torn:
            warnings.warn(f"{self.path}: dropped a torn last line (its batch is recomputed)", stacklevel=3)
        if not complete:
            self.path.unlink()  # only a torn header: start the cell afresh
            return
        header = cell_header(self.path, complete)
        if header.get("fingerprint") != self.fingerprint:
            # Our own cell, written for other cases or settings (a changed config or attack):
            # set it aside, never mix it in and never delete it, and compute this cell afresh.
            stale = set_aside(self.path, self.path.stem, str(header.get("fingerprint")), f"{self.path.suffix}.old")
            warnings.warn(f"{self.path}: written for other cases or settings ({header.get('fingerprint')} != "
                          f"{self.fingerprint}); kept as {stale.name}, recomputing", stacklevel=3)
            return
        for number, batch, records in cell_batches(self.path, complete):
            try:
                self.done[batch] = [self.record_class.from_json(r) for r in records]
            except (KeyError, TypeError, ValueError) as err:
                raise DataError([f"{self.path}:{number}: malformed batch line ({err})"]) from None
        if torn:
            # Rewrite without the torn tail so the next append starts on a fresh line.
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("\n".join(complete) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)

    def _append(self, obj: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add(self, batch: int | str, records: list) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._append({"format": CELL_FORMAT, "fingerprint": self.fingerprint, **self.meta})
        self._append({"batch": batch, "records": [r.to_json() for r in records]})
        self.done[batch] = records

    def records(self, batches: int) -> list | None:
        """Every record in batch order once all `batches` are done, else None."""
        if any(b not in self.done for b in range(batches)):
            return None
        return [r for b in range(batches) for r in self.done[b]]
