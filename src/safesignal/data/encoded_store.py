"""Encoded examples as flat arrays on disk, read back through memory maps.

A store is a directory of raw little-endian arrays plus `store.json` (counts and dtypes):

    input_ids.bin        every example's token ids, back to back (uint16 when the vocabulary
                         fits, else int32)
    query_mask.bin       the query mask of those tokens, one bit per token (np.packbits)
    token_labels.bin     int8 token labels of the examples that have them, back to back
    offsets.bin          int64, examples + 1: example k is tokens offsets[k]:offsets[k+1]
    prompt_length.bin, supervised_from.bin   int32 per example
    label.bin            int8 per example (-1: no label)
    token_labels_at.bin  int64 per example: where its token labels start (-1: none)

`write_store` fills one from a stream of examples, holding one chunk at a time, so a file
of any size is encoded in flat memory. `EncodedStore` maps the files read-only: the page
cache holds them once for every process (each rank of a distributed run, each data-loader
worker), and an example is copied into Python lists only when it is asked for.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..formatting import EncodedExample

STORE_FILE = "store.json"
STORE_FORMAT, STORE_VERSION = "safesignal-encoded-examples", 1
CHUNK_EXAMPLES = 4096
NO_LABEL = -1
# name -> dtype of the per-example arrays; the token arrays' dtypes are in store.json.
PER_EXAMPLE = {"prompt_length": np.int32, "supervised_from": np.int32, "label": np.int8,
               "token_labels_at": np.int64}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (SmolLM2, 49,152 ids: half the bytes of int32), else int32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def is_store(path: Path) -> bool:
    return (Path(path) / STORE_FILE).is_file()


class _Appender:
    """Raw arrays appended chunk by chunk to open files; the query mask packed 8 tokens a byte,
    carrying the bits of a partial byte into the next chunk."""

    def __init__(self, directory: Path, ids_dtype: np.dtype):
        self.directory, self.ids_dtype = directory, ids_dtype
        names = ["input_ids", "query_mask", "token_labels", "offsets", *PER_EXAMPLE]
        self.files = {name: open(directory / f"{name}.bin", "wb") for name in names}
        self.mask_carry = np.zeros(0, dtype=bool)
        self.examples = self.tokens = self.labelled_tokens = 0
        self.files["offsets"].write(np.zeros(1, dtype=np.int64).tobytes())
        self._reset()

    def _reset(self) -> None:
        self.ids, self.mask, self.token_labels = [], [], []
        self.ends, self.per_example = [], {name: [] for name in PER_EXAMPLE}

    def add(self, example: EncodedExample) -> None:
        if len(example.query_mask) != len(example.input_ids):
            raise ValueError(f"query_mask has {len(example.query_mask)} entries for {len(example.input_ids)} tokens")
        if example.token_labels is not None and len(example.token_labels) != len(example.input_ids):
            raise ValueError(f"token_labels has {len(example.token_labels)} entries for {len(example.input_ids)} tokens")
        at = NO_LABEL
        if example.token_labels is not None:
            at = self.labelled_tokens
            self.labelled_tokens += len(example.token_labels)
            self.token_labels += example.token_labels
        self.tokens += len(example.input_ids)
        self.ids += example.input_ids
        self.mask += example.query_mask
        self.ends.append(self.tokens)
        row = {"prompt_length": example.prompt_length, "supervised_from": example.supervised_from,
               "label": NO_LABEL if example.label is None else example.label, "token_labels_at": at}
        for name, value in row.items():
            self.per_example[name].append(value)
        self.examples += 1
        if len(self.ends) == CHUNK_EXAMPLES:
            self.flush()

    def flush(self, last: bool = False) -> None:
        write = {"input_ids": np.array(self.ids, dtype=self.ids_dtype),
                 "token_labels": np.array(self.token_labels, dtype=np.int8),
                 "offsets": np.array(self.ends, dtype=np.int64),
                 **{name: np.array(values, dtype=PER_EXAMPLE[name]) for name, values in self.per_example.items()}}
        bits = np.concatenate([self.mask_carry, np.array(self.mask, dtype=bool)])
        whole = len(bits) if last else len(bits) - len(bits) % 8  # packbits pads the last byte
        write["query_mask"] = np.packbits(bits[:whole])
        self.mask_carry = bits[whole:]
        for name, values in write.items():
            self.files[name].write(values.tobytes())
        self._reset()

    def close(self) -> dict:
        self.flush(last=True)
        for handle in self.files.values():
            handle.close()
        return {"format": STORE_FORMAT, "version": STORE_VERSION, "examples": self.examples, "tokens": self.tokens,
                "labelled_tokens": self.labelled_tokens, "input_ids_dtype": self.ids_dtype.name}


def write_store(examples: Iterable[EncodedExample], directory: str | Path, vocab_size: int,
                info: dict | None = None) -> EncodedStore:
    """Write `examples` (any iterable, consumed once) as a store in `directory` (created; it
    must not exist, so callers build in a staging directory and rename it into place).
    `info` is kept in store.json (what the store was built from)."""
    directory = Path(directory)
    directory.mkdir(parents=True)
    appender = _Appender(directory, token_dtype(vocab_size))
    try:
        for example in examples:
            appender.add(example)
    finally:
        meta = appender.close()
    (directory / STORE_FILE).write_text(json.dumps({**meta, "built_from": info or {}}, indent=2) + "\n")
    return EncodedStore(directory)


class EncodedStore:
    """The examples of a store directory, memory-mapped read-only."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not is_store(self.directory):
            raise FileNotFoundError(f"{self.directory}: not an encoded-example store (no {STORE_FILE})")
        self.meta = json.loads((self.directory / STORE_FILE).read_text())
        if (self.meta.get("format"), self.meta.get("version")) != (STORE_FORMAT, STORE_VERSION):
            raise ValueError(f"{self.directory}: {STORE_FILE}: not a version-{STORE_VERSION} {STORE_FORMAT} store")
        self._maps: dict[str, np.ndarray] | None = None

    def _open(self) -> dict[str, np.ndarray]:
        dtypes = {"input_ids": np.dtype(self.meta["input_ids_dtype"]), "query_mask": np.uint8,
                  "token_labels": np.int8, "offsets": np.int64, **PER_EXAMPLE}
        return {name: _map(self.directory / f"{name}.bin", dtype) for name, dtype in dtypes.items()}

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._maps is None:  # opened lazily: a pickled store (a spawned worker) maps its own
            self._maps = self._open()
        return self._maps

    def __getstate__(self):
        # Memory maps pickle as full copies; send the directory and map again on arrival.
        return {**self.__dict__, "_maps": None}

    def __len__(self) -> int:
        return self.meta["examples"]

    @property
    def labels(self) -> np.ndarray:
        """int8 per example, -1 for an example without a label."""
        return self.arrays["label"]

    def example(self, k: int, sample_key: int | None = None) -> EncodedExample:
        a = self.arrays
        start, end = int(a["offsets"][k]), int(a["offsets"][k + 1])
        first_byte = start // 8
        bits = np.unpackbits(a["query_mask"][first_byte:(end + 7) // 8])
        mask = bits[start - 8 * first_byte:end - 8 * first_byte].astype(bool)
        at = int(a["token_labels_at"][k])
        label = int(a["label"][k])
        return EncodedExample(
            input_ids=a["input_ids"][start:end].tolist(),
            query_mask=mask.tolist(),
            prompt_length=int(a["prompt_length"][k]),
            supervised_from=int(a["supervised_from"][k]),
            label=None if label == NO_LABEL else label,
            sample_key=sample_key,
            token_labels=None if at == NO_LABEL else a["token_labels"][at:at + end - start].tolist(),
        )

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())


def _map(path: Path, dtype) -> np.ndarray:
    # np.memmap refuses an empty file (a store without token labels has one).
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
