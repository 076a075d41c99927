"""`safesignal data prepare`: train / validation JSONL from the user's own files, at any size.

The recipe (`DataPrepareConfig`, e.g. configs/paper/data.yaml) names the files that fill each
role. The rules are `data build`'s, applied to files too big to hold:

1. evaluation prompts first: the suite's own (`build.suite_evaluation_index`) and the
   recipe's evaluation files go into one `PromptIndex`;
2. scan (one streamed pass over every training file, malicious role first): each row is
   mapped and validated (`row_styles`, `schema.parse_record`); a malformed row is listed
   with file, row and column; a row that (nearly) copies an evaluation prompt is dropped;
   every other row is appended to a spool file beside the outputs, and only a few numbers
   per row stay in memory (`RowState`: role, source, a hash of its normalised prompt and
   its MinHash signature, ~200 bytes);
3. duplicates among training rows: exact copies by hash; near copies by MinHash + LSH
   candidates (`minhash`) checked with the exact Jaccard rule (shingles of the candidate
   rows only, read back from the spool); decided in row order, so the first occurrence
   stays and a benign copy of a malicious prompt is the one dropped;
4. each role keeps at most `max_records` (in order, or a seeded sample), then splits into
   train / validation by the build's rule (`build.validation_positions`, per label);
5. a second pass over the spool writes train.jsonl and validation.jsonl (rows in their
   files' order: the trainer shuffles), dropped.jsonl (every dropped row, why, and the row
   it copies), rejected.jsonl (on_error: skip) and summary.json, each atomically.

The output directory follows `data build`'s rule: missing, empty or one this project wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections import Counter
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from ..io import DataError, atomic_write_json, atomic_writer, claim_directory, refuse_unless_ours
from .build import SUMMARY_FILE, SUMMARY_FORMAT, is_data_dir, suite_evaluation_index, validation_positions
from .dedup import NEAR_DUPLICATE_JACCARD, PromptIndex, shingles
from .minhash import (
    MinHashLSH, candidate_probability, copies_of_earlier, first_occurrence_of, gram_hashes, verified_pairs,
)
from .prepare_config import DataPrepareConfig, SourceFile
from .row_styles import Problems, RowMapper, mapped_rows
from .schema import parse_record
from .sources import normalise

TRAIN_FILE, VALIDATION_FILE = "train.jsonl", "validation.jsonl"
DROPPED_FILE, REJECTED_FILE = "dropped.jsonl", "rejected.jsonl"
ROLE_LABEL = {"malicious": 1, "benign": 0}
CHUNK_ROWS = 4096


class RowState:
    """What the passes after the scan need of each spooled row: role (1 byte), source (2),
    exact-copy hash (8), has-words flag (1) and the MinHash signature (2 per value)."""

    COLUMNS = ("role", "source", "exact", "has_words", "signatures")

    def __init__(self, lsh: MinHashLSH):
        self.lsh = lsh
        self._chunks: dict[str, list[np.ndarray]] = {name: [] for name in self.COLUMNS}
        self._columns: dict[str, np.ndarray] = {}
        self._pending: list[tuple[int, int, int, np.ndarray]] = []

    def add(self, role: int, source: int, query: str) -> None:
        exact = int.from_bytes(hashlib.blake2b(normalise(query).encode(), digest_size=8).digest(), "little")
        self._pending.append((role, source, exact, gram_hashes(query)))
        if len(self._pending) == CHUNK_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        role, source, exact, hashes = zip(*self._pending)
        has_words = np.array([len(h) > 0 for h in hashes], dtype=bool)
        signatures = np.zeros((len(hashes), self.lsh.bands * self.lsh.rows), dtype=np.uint16)
        if has_words.any():  # a row without words keeps zeros and is never compared (not eligible)
            signatures[has_words] = self.lsh.signatures([h for h in hashes if len(h)])
        for name, values in (("role", np.array(role, dtype=np.uint8)), ("source", np.array(source, dtype=np.uint16)),
                             ("exact", np.array(exact, dtype=np.uint64)), ("has_words", has_words),
                             ("signatures", signatures)):
            self._chunks[name].append(values)
        self._pending = []

    def finish(self) -> None:
        """Join each column's chunks into one array, freeing every chunk once copied, so the
        join needs one chunk beyond the state itself rather than twice the state."""
        self._flush()
        for name, chunks in self._chunks.items():
            rows = sum(len(c) for c in chunks)
            shape = (rows, self.lsh.bands * self.lsh.rows) if name == "signatures" else (rows,)
            column = np.empty(shape, dtype=chunks[0].dtype if chunks else np.uint8)
            at = 0
            for k in range(len(chunks)):
                column[at:at + len(chunks[k])] = chunks[k]
                at += len(chunks[k])
                chunks[k] = None
            self._columns[name] = column
        self._chunks = {}

    def column(self, name: str) -> np.ndarray:
        return self._columns[name]

    def drop_signatures(self) -> None:
        del self._columns["signatures"]

    @property
    def rows(self) -> int:
        return len(self.column("role"))

    def bytes_per_row(self) -> int:
        return 1 + 2 + 8 + 1 + 2 * self.lsh.bands * self.lsh.rows


def evaluation_index(config: DataPrepareConfig, problems: Problems) -> PromptIndex:
    """Every prompt training must not (nearly) copy: the suite's and the recipe's evaluation files."""
    index = suite_evaluation_index() if config.reserve_suite_evaluation else PromptIndex()
    for source in config.evaluation:
        mapper = _mapper(source, label=None, config=config, require_response=False)
        for _, (_, record) in mapped_rows(source.data_file, mapper, problems, format=source.format, split=source.split):
            index.add(record.query)
    return index


def _mapper(source: SourceFile, label: int | None, config: DataPrepareConfig, require_response: bool = True) -> RowMapper:
    try:
        return RowMapper(source.style, source.source_name, label, dict(source.columns), source.refusals,
                         list(source.require_empty), require_response, config.seed)
    except ValueError as err:
        raise ValueError(f"{source.data_file}: {err}") from None


@dataclass
class Scan:
    """Pass 1's counts; source k of `names` (in role order) carries label `labels[k]`."""

    names: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # (source, reason) -> rows
    skipped: Counter = field(default_factory=Counter)  # source -> rows left out by require_empty


def _scan(config: DataPrepareConfig, reserved: PromptIndex, spool: TextIO, dropped: TextIO,
          problems: Problems, state: RowState) -> Scan:
    """Pass 1: every good row that copies no evaluation prompt goes to the spool and `state`."""
    scan = Scan()
    for role_index, (role_name, role) in enumerate(config.roles().items()):
        for source in role.sources:
            scan.names.append(source.source_name)
            scan.labels.append(ROLE_LABEL[role_name])
            mapper = _mapper(source, ROLE_LABEL[role_name], config)
            for where, (obj, record) in mapped_rows(source.data_file, mapper, problems, format=source.format,
                                                   split=source.split, skipped=scan.skipped):
                query = record.query
                if reserved.contains(query):
                    reason = "matches an evaluation prompt"
                    dropped.write(json.dumps({"where": where, "reason": reason}, ensure_ascii=False) + "\n")
                    scan.dropped[(source.source_name, reason)] += 1
                    continue
                # The where, a tab (never inside a JSON string), the record as it will be written.
                spool.write(json.dumps(where, ensure_ascii=False) + "\t" + json.dumps(obj, ensure_ascii=False) + "\n")
                state.add(role_index, len(scan.names) - 1, query)
    return scan


def _spool_lines(path: Path):
    with path.open(encoding="utf-8") as handle:
        yield from enumerate(handle)


def _shingles_of_rows(spool: Path, rows: np.ndarray) -> dict[int, frozenset]:
    """Exact shingle sets of the candidate rows only, read back from the spool."""
    wanted, out = set(rows.tolist()), {}
    for index, line in _spool_lines(spool):
        if index in wanted:
            where, _, record = line.partition("\t")
            out[index] = shingles(parse_record(json.loads(record), json.loads(where), require_response=False).query)
    return out


def _assign_splits(config: DataPrepareConfig, state: RowState, kept: np.ndarray) -> tuple[np.ndarray, Counter]:
    """Per row: -1 out, 0 train, 1 validation; and the rows each role left out for max_records."""
    split = np.full(state.rows, -1, dtype=np.int8)
    unselected = Counter()
    rng = random.Random(config.seed)
    for role_index, (role_name, role) in enumerate(config.roles().items()):
        rows = np.flatnonzero(kept & (state.column("role") == role_index))
        if role.max_records is not None and len(rows) > role.max_records:
            unselected[role_name] = len(rows) - role.max_records
            if role.select == "random":
                sample = random.Random(f"select/{config.seed}/{role_name}").sample(range(len(rows)), role.max_records)
                rows = rows[np.sort(np.array(sample, dtype=np.int64))]
            else:
                rows = rows[:role.max_records]
        split[rows] = 0
        split[rows[np.array(validation_positions(len(rows), config.validation_fraction, rng), dtype=np.int64)]] = 1
    return split, unselected


def _by_source(scan: Scan, source_of_rows: np.ndarray) -> dict[str, dict[str, int]]:
    """source -> {label: records}, as `data build`'s summary counts them."""
    counts = np.bincount(source_of_rows, minlength=len(scan.names))
    return {scan.names[s]: {str(scan.labels[s]): int(counts[s])} for s in np.flatnonzero(counts).tolist()}


def prepare(config: DataPrepareConfig) -> dict:
    """Write train / validation (and the logs) for `config`; returns the summary."""
    config.validate()
    out_dir = config.resolved_out_dir()
    refuse_unless_ours(out_dir, is_data_dir, "data directory")  # before any reading
    out_dir = claim_directory(out_dir, is_data_dir, "data directory")
    lsh = MinHashLSH(config.lsh_bands, config.lsh_rows, config.seed)
    fd, spool_name = tempfile.mkstemp(prefix=".prepare-", suffix=".spool", dir=out_dir)
    spool_path = Path(spool_name)
    try:
        with atomic_writer(out_dir / DROPPED_FILE) as dropped, _rejected_log(config, out_dir) as rejected:
            problems = Problems(rejected)
            reserved = evaluation_index(config, problems)
            state = RowState(lsh)
            with os.fdopen(fd, "w", encoding="utf-8") as spool:
                scan = _scan(config, reserved, spool, dropped, problems, state)
            problems.raise_if_any()
            state.finish()

            exact_of = first_occurrence_of(state.column("exact"))
            is_copy = exact_of >= 0
            pairs, oversized = lsh.candidate_pairs(state.column("signatures"), state.column("has_words") & ~is_copy,
                                                   config.lsh_bucket_window)
            state.drop_signatures()
            verified = verified_pairs(pairs, _shingles_of_rows(spool_path, np.unique(pairs)), NEAR_DUPLICATE_JACCARD)
            near = copies_of_earlier(verified, dropped=is_copy)
            kept = ~is_copy
            kept[list(near)] = False
            split, unselected = _assign_splits(config, state, kept)
            if not (split == 0).any():
                raise DataError([f"{config.resolved_out_dir()}: no training record left after deduplication "
                                 f"({state.rows} rows scanned; see {DROPPED_FILE})"])
            _write_splits(out_dir, spool_path, split, exact_of, near, dropped, scan, state.column("source"))
    finally:
        spool_path.unlink(missing_ok=True)

    summary = {
        "format": SUMMARY_FORMAT,
        "command": "safesignal data prepare",
        "config": asdict(config),
        "files": {name: {"records": int((split == value).sum()),
                         "by_source": _by_source(scan, state.column("source")[split == value])}
                  for name, value in ((TRAIN_FILE, 0), (VALIDATION_FILE, 1))},
        "rejected_rows": problems.total,
        "skipped_rows_require_empty": dict(scan.skipped),
        "left_out_by_max_records": dict(unselected),
        "dropped": {f"{source}: {reason}": n for (source, reason), n in sorted(scan.dropped.items())},
        "evaluation_prompts_reserved": len(reserved),
        "near_duplicates": {
            "jaccard_threshold": NEAR_DUPLICATE_JACCARD, "lsh_bands": lsh.bands, "lsh_rows": lsh.rows,
            "candidate_probability_at_threshold": round(candidate_probability(NEAR_DUPLICATE_JACCARD, lsh.bands, lsh.rows), 4),
            "candidate_pairs": len(pairs), "verified_pairs": len(verified), "oversized_buckets": oversized,
        },
        "state_bytes_per_row": state.bytes_per_row(),
    }
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return summary


def _rejected_log(config: DataPrepareConfig, out_dir: Path):
    return atomic_writer(out_dir / REJECTED_FILE) if config.on_error == "skip" else nullcontext(None)


def _write_splits(out_dir: Path, spool: Path, split: np.ndarray, exact_of: np.ndarray, near: dict[int, tuple[int, float]],
                  dropped: TextIO, scan: Scan, sources: np.ndarray) -> None:
    """Pass 2: each spooled record to its file; each duplicate to dropped.jsonl with the row it copies."""
    copied = set(exact_of[exact_of >= 0].tolist()) | {i for i, _ in near.values()}
    where_of: dict[int, str] = {}
    with atomic_writer(out_dir / TRAIN_FILE) as train, atomic_writer(out_dir / VALIDATION_FILE) as validation:
        for index, line in _spool_lines(spool):
            where_text, _, record = line.partition("\t")
            if index in copied:
                where_of[index] = json.loads(where_text)
            if split[index] == 0:
                train.write(record)
            elif split[index] == 1:
                validation.write(record)
            elif exact_of[index] >= 0 or index in near:
                if exact_of[index] >= 0:
                    entry = {"reason": "exact copy of an earlier training prompt", "of": where_of[int(exact_of[index])]}
                else:
                    earlier, similarity = near[index]
                    entry = {"reason": "near copy of an earlier training prompt", "of": where_of[earlier],
                             "jaccard": round(similarity, 3)}
                dropped.write(json.dumps({"where": json.loads(where_text), **entry}, ensure_ascii=False) + "\n")
                scan.dropped[(scan.names[sources[index]], entry["reason"])] += 1
