"""A user's data file, encoded once into a store that every run and rank on it maps.

`encoded_file(path, formatter, cache_root)` returns the store of `path` (JSONL, JSON, CSV,
Parquet or a saved HF dataset directory, read by user_files.py, rows mapped and validated by
row_styles.py exactly as `data prepare` reads them). The store lives in
`cache_root/<key>`, where the key hashes everything the encoded examples depend on: the
file's bytes, how its rows are read (format, style, column mapping), the tokenizer (its full
serialisation: vocabulary, merges, added tokens such as `[CLS]`), the chat template,
max_length, and the source of the modules that turn rows into examples. A resumed or
repeated run finds it; a changed file, tokenizer or encoder gets a new one.

The store is built in one streamed pass (rows are never all held), in a staging directory
renamed into place only once complete and valid: a crash leaves no store to be mistaken for
a good one, and a file with a bad row leaves none at all (every bad row is listed, with file,
row and field). In a distributed run the main process builds while the others wait, then
all of them map the same files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from accelerate import PartialState

from .. import formatting
from . import row_styles, schema, user_files
from .dataset import encode_record
from .encoded_store import STORE_VERSION, EncodedStore, is_store, write_store
from .row_styles import Problems, RowMapper, mapped_rows
from .schema import DataError

READ_CHUNK = 1 << 20
# The code between a row and its EncodedExample: a change to any of it makes a new store.
ENCODING_MODULES = (formatting, schema, row_styles, user_files)


def encoded_file(path: str | Path, formatter: formatting.PromptFormatter, cache_root: str | Path, *,
                 style: str = "records", columns: dict[str, str] | None = None) -> EncodedStore:
    """The store of `path`'s examples, built unless `cache_root` already holds it.

    `style` and `columns`: how the file's rows become records (row_styles.py); every row must
    carry its own label. A DataError lists every row that is not valid or cannot be encoded."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: data file not found")
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise ValueError(f"{path}: a saved HF DatasetDict; give the directory of one split "
                         f"({', '.join(str(path / s) for s in splits)})")
    mapper = _mapper(path, style, columns or {})
    cache_root = Path(cache_root)
    target = cache_root / store_key(path, formatter, style, columns or {})
    with PartialState().main_process_first():
        if not is_store(target):
            _build(path, mapper, formatter, target)
    return EncodedStore(target)


def store_key(path: Path, formatter: formatting.PromptFormatter, style: str, columns: dict[str, str]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in (f"store v{STORE_VERSION}", user_files.detect_format(path), style, sorted(columns.items()),
                 formatter.max_length, tokenizer_fingerprint(formatter.tokenizer)):
        digest.update(repr(part).encode() + b"\0")
    for module in ENCODING_MODULES:
        digest.update(Path(module.__file__).read_bytes())
    _hash_file_tree(path, digest)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """Everything of the tokenizer that `PromptFormatter.encode` reads."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (type(tokenizer).__name__, tokenizer.backend_tokenizer.to_str(), tokenizer.chat_template,
                 tokenizer.eos_token, tokenizer.bos_token, sorted(tokenizer.all_special_ids),
                 sorted((i, t.content, t.special) for i, t in tokenizer.added_tokens_decoder.items())):
        digest.update(repr(part).encode() + b"\0")
    return digest.hexdigest()


def _hash_file_tree(path: Path, digest) -> None:
    """The bytes of a file, or of every file in a directory (a saved HF dataset) with its name."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else "").encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(READ_CHUNK):
                digest.update(chunk)


def _mapper(path: Path, style: str, columns: dict[str, str]) -> RowMapper:
    try:
        return RowMapper(style, path.stem, label=None, columns=dict(columns), require_label=True)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _build(path: Path, mapper: RowMapper, formatter: formatting.PromptFormatter, target: Path) -> None:
    problems = Problems()

    def examples():
        for _, (_, record) in mapped_rows(path, mapper, problems):
            try:
                yield encode_record(record, formatter)
            except DataError as err:
                for problem in err.problems:
                    problems.add(problem)

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        store = write_store(examples(), staging / "store", len(formatter.tokenizer),
                            info={"file": str(path), "style": mapper.style, "columns": mapper.columns})
        problems.raise_if_any()
        if len(store) == 0:
            raise DataError([f"{path}: file: no records"])
        try:
            os.rename(staging / "store", target)
        except OSError:
            if not is_store(target):  # else another process built it first: use theirs
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
