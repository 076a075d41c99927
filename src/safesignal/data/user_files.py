"""Rows of a user's own data file, streamed: JSONL, CSV, Parquet or a saved HF dataset.

`iter_rows(path)` yields `(where, row)` one row at a time; `row` is a dict of column -> value,
or a string describing why the row could not be read (a line that is not JSON, a CSV row
with the wrong number of fields), so the caller reports every bad row instead of stopping
at the first or losing it. `where` names the file and the row in the terms its format uses:
"file:LINE" (1-based, as an editor shows it) for JSONL and CSV, "file:row N" (0-based, as
`ds[N]` / `df.iloc[N]`) for Parquet, JSON arrays and HF datasets.

Nothing is loaded whole: JSONL and CSV are read line by line, Parquet in record batches of
the requested columns only (memory-mapped), an HF `save_to_disk` directory through its
memory-mapped Arrow files. The exception is a JSON array (Alpaca's `alpaca_data.json`),
which cannot be parsed in pieces; it is read whole, and a big one should become JSONL.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..io import iter_jsonl_lines  # the one JSONL reader

FORMATS = ("jsonl", "json", "csv", "parquet", "hf")
BATCH_ROWS = 4096
# csv refuses fields over 128 KiB by default; a long LIMA answer is a legitimate field.
CSV_FIELD_LIMIT = 2**31 - 1


class FileFormatError(ValueError):
    """The file as a whole cannot be read as asked (format, missing column, split)."""


def detect_format(path: str | Path) -> str:
    """The format of `path` from its name: a directory is a saved HF dataset."""
    path = Path(path)
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    by_suffix = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    if suffix == ".json":
        # Both conventions use .json: look at the first character.
        with path.open(encoding="utf-8") as handle:
            head = handle.read(4096).lstrip()
        return "json" if head.startswith("[") else "jsonl"
    raise FileFormatError(f"{path}: cannot tell the format from the name; give format: one of {', '.join(FORMATS)}")


def iter_rows(path: str | Path, format: str = "auto", *, columns: Sequence[str] | None = None,
              optional: Sequence[str] = (), split: str | None = None,
              batch_rows: int = BATCH_ROWS) -> Iterator[tuple[str, dict | str]]:
    """(where, row or problem) for every row of `path`.

    `columns`: the columns the caller needs (a file whose header or schema lacks one is a
    FileFormatError naming the columns it has); `optional`: columns read when the file has
    them. Parquet and HF read only these two lists (None: every column); JSONL rows carry
    whatever keys each line has. `split`: the split of a saved `DatasetDict`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: data file not found")
    format = detect_format(path) if format == "auto" else format
    if format not in FORMATS:
        raise FileFormatError(f"{path}: format: {format!r} is not one of {', '.join(FORMATS)} (or auto)")
    if split is not None and format != "hf":
        raise FileFormatError(f"{path}: split: only a saved HF DatasetDict has splits")
    if format == "jsonl":
        yield from _jsonl_rows(path)
    elif format == "json":
        yield from _json_array_rows(path)
    elif format == "csv":
        yield from _csv_rows(path, columns)
    elif format == "parquet":
        yield from _parquet_rows(path, columns, optional, batch_rows)
    else:
        yield from _hf_rows(path, columns, optional, split, batch_rows)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict | str]]:
    with path.open(encoding="utf-8") as handle:
        yield from iter_jsonl_lines(handle, str(path))


def _json_array_rows(path: Path) -> Iterator[tuple[str, dict | str]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FileFormatError(f"{path}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(rows, list):
        raise FileFormatError(f"{path}: expected a JSON array of objects or JSON Lines, got a {type(rows).__name__}")
    for k, row in enumerate(rows):
        yield f"{path}:row {k}", row if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"


def _projection(path: Path, have: Sequence[str], want: Sequence[str] | None, optional: Sequence[str]) -> list[str] | None:
    """The columns to read: every wanted one (a missing one is an error) plus the optional
    ones the file has; None (all) when the caller wants every column."""
    missing = [c for c in (want or ()) if c not in have]
    if missing:
        raise FileFormatError(f"{path}: column {missing[0]!r} not found (columns: {', '.join(have)})")
    if want is None:
        return None
    return list(dict.fromkeys([*want, *(c for c in optional if c in have)]))


def _csv_rows(path: Path, columns: Sequence[str] | None) -> Iterator[tuple[str, dict | str]]:
    csv.field_size_limit(CSV_FIELD_LIMIT)
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise FileFormatError(f"{path}: empty CSV file (expected a header row naming the columns)")
        _projection(path, header, columns, ())
        for fields in reader:
            where = f"{path}:{reader.line_num}"  # the line the row ends on (a quoted field may span lines)
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                yield where, f"expected {len(header)} fields (the header's), got {len(fields)}"
                continue
            yield where, dict(zip(header, fields))


def _parquet_rows(path: Path, columns: Sequence[str] | None, optional: Sequence[str],
                  batch_rows: int) -> Iterator[tuple[str, dict | str]]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path, memory_map=True)
    read = _projection(path, parquet.schema_arrow.names, columns, optional)
    row = 0
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=read):
        for values in batch.to_pylist():
            yield f"{path}:row {row}", values
            row += 1


def _hf_rows(path: Path, columns: Sequence[str] | None, optional: Sequence[str], split: str | None,
             batch_rows: int) -> Iterator[tuple[str, dict | str]]:
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except FileNotFoundError as err:
        raise FileFormatError(f"{path}: not a saved HF dataset (save_to_disk) directory: {err}") from None
    if isinstance(dataset, DatasetDict):
        if split not in dataset:
            raise FileFormatError(f"{path}: split: a DatasetDict; give one of {', '.join(dataset)}"
                                  + (f" (not {split!r})" if split else ""))
        dataset, where = dataset[split], f"{path}[{split}]"
    elif split is not None:
        raise FileFormatError(f"{path}: split: a single Dataset has no splits (got {split!r})")
    else:
        where = str(path)
    read = _projection(path, dataset.column_names, columns, optional)
    if read is not None:
        dataset = dataset.select_columns(read)
    row = 0
    for batch in dataset.iter(batch_size=batch_rows):  # reads the memory-mapped Arrow tables
        names = list(batch)
        for values in zip(*(batch[name] for name in names)):
            yield f"{where}:row {row}", dict(zip(names, values))
            row += 1
