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
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from ..io import DataError
from .generation import CaseRecord

CELL_FORMAT = "safesignal-eval-cell"


def fingerprint(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class CellFile:
    def __init__(self, path: Path, fingerprint: str, meta: dict | None = None):
        self.path, self.fingerprint, self.meta = Path(path), fingerprint, meta or {}
        self.done: dict[int, list[CaseRecord]] = {}
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        lines = self.path.read_text(encoding="utf-8").split("\n")
        complete = lines[:-1]  # every line a finished write ended with "\n"; the rest is torn
        if lines[-1].strip():
            warnings.warn(f"{self.path}: dropped a torn last line (its batch is recomputed)", stacklevel=3)
        if not complete:
            self.path.unlink()  # only a torn header: start the cell afresh
            return
        try:
            header = json.loads(complete[0])
        except json.JSONDecodeError as err:
            raise DataError([f"{self.path}:1: invalid header ({err.msg})"]) from None
        if header.get("format") != CELL_FORMAT:
            raise DataError([f"{self.path}:1: format: expected {CELL_FORMAT!r}, not an eval cell"])
        if header.get("fingerprint") != self.fingerprint:
            # Our own cell, written for other cases or settings (a changed config or attack):
            # set it aside, never mix it in and never delete it, and compute this cell afresh.
            stale = self.path.with_name(f"{self.path.stem}.stale-{header.get('fingerprint')}{self.path.suffix}.old")
            os.replace(self.path, stale)
            warnings.warn(f"{self.path}: written for other cases or settings ({header.get('fingerprint')} != "
                          f"{self.fingerprint}); kept as {stale.name}, recomputing", stacklevel=3)
            return
        for number, line in enumerate(complete[1:], start=2):
            try:
                obj = json.loads(line)
                self.done[int(obj["batch"])] = [CaseRecord.from_json(r) for r in obj["records"]]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
                raise DataError([f"{self.path}:{number}: malformed batch line ({err})"]) from None
        if lines[-1].strip():
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

    def add(self, batch: int, records: list[CaseRecord]) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._append({"format": CELL_FORMAT, "fingerprint": self.fingerprint, **self.meta})
        self._append({"batch": batch, "records": [r.to_json() for r in records]})
        self.done[batch] = records

    def records(self, batches: int) -> list[CaseRecord] | None:
        """Every record in batch order once all `batches` are done, else None."""
        if any(b not in self.done for b in range(batches)):
            return None
        return [r for b in range(batches) for r in self.done[b]]
