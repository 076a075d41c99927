"""MinHash + LSH: near-duplicate candidates among millions of prompts in bounded memory.

`dedup.PromptIndex` answers "does this prompt (nearly) copy one of yours?" exactly, for a
reference set held in memory (the evaluation prompts). Deduplicating a million training
prompts among themselves that way would keep every prompt's shingle set (about a kilobyte
each) and compare along long posting lists. Here each prompt keeps only `bands` 4-byte LSH
keys, and two prompts become candidates when one band's key agrees; the candidates are then
checked with the exact definition (`dedup.shingles` + `dedup.jaccard` >= the threshold), so
LSH decides only what gets compared: it can miss a pair (recall), never invent one.

The same shingles as `dedup.shingles` are hashed (crc32 of the words joined by spaces), so
the estimate and the exact check measure the same sets. With `rows` minima per band a pair
at Jaccard s becomes a candidate with probability 1 - (1 - s^rows)^bands; the defaults
(32 bands of 3) give 0.986 at s = 0.5, 0.9993 at 0.6, 0.23 at 0.2 (`candidate_probability`).

A band key shared by more than `window` + 1 prompts (a frequent opening like "how do I" that
fills a bucket) is not expanded into all its pairs: each prompt is paired with the `window`
before it in that bucket; `oversized_buckets` counts where that happened. Exact copies never
reach a bucket: they are found first, by key, and only their first occurrence takes part.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .dedup import jaccard, shingles

PRIME = 4294967311  # 2^32 + 15: (a * x + b) mod PRIME with a, x, b < 2^32 never overflows uint64
MAX_GRAMS_PER_BLOCK = 1 << 15  # bounds the (grams x permutations) matrix of one block to ~25 MB


def gram_hashes(text: str) -> np.ndarray:
    """The crc32 of each of `dedup.shingles(text)`, as uint32 (empty for a text without words)."""
    return np.fromiter((zlib.crc32(" ".join(g).encode()) for g in shingles(text)), dtype=np.uint32)


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that a pair at this Jaccard similarity shares at least one band key."""
    return 1.0 - (1.0 - similarity**rows) ** bands


@dataclass(frozen=True)
class MinHashLSH:
    bands: int = 32
    rows: int = 3
    seed: int = 0

    def __post_init__(self):
        if self.bands < 1 or self.rows < 1:
            raise ValueError(f"lsh: bands and rows must be at least 1, got {self.bands} and {self.rows}")
        rng = np.random.default_rng(self.seed)
        k = self.bands * self.rows
        object.__setattr__(self, "_a", rng.integers(1, 1 << 32, size=k, dtype=np.uint64))
        object.__setattr__(self, "_b", rng.integers(0, 1 << 32, size=k, dtype=np.uint64))
        # Odd 64-bit multipliers fold a band's minima into one key (uint64 arithmetic wraps).
        object.__setattr__(self, "_mix", rng.integers(1, 1 << 63, size=self.rows, dtype=np.uint64) * 2 + 1)

    def signatures(self, hashes: list[np.ndarray]) -> np.ndarray:
        """(len(hashes), bands * rows) MinHash signatures; every array must be non-empty."""
        out = np.empty((len(hashes), self.bands * self.rows), dtype=np.uint64)
        start = 0
        while start < len(hashes):
            stop, grams = start, 0
            while stop < len(hashes) and (stop == start or grams + len(hashes[stop]) <= MAX_GRAMS_PER_BLOCK):
                grams += len(hashes[stop])
                stop += 1
            block = hashes[start:stop]
            x = np.concatenate(block).astype(np.uint64)
            permuted = (x[:, None] * self._a[None, :] + self._b[None, :]) % np.uint64(PRIME)
            offsets = np.cumsum([0] + [len(h) for h in block[:-1]])
            out[start:stop] = np.minimum.reduceat(permuted, offsets, axis=0)
            start = stop
        return out

    def band_keys(self, hashes: list[np.ndarray]) -> np.ndarray:
        """(len(hashes), bands) uint32 LSH keys; every array must be non-empty."""
        signatures = self.signatures(hashes).reshape(len(hashes), self.bands, self.rows)
        folded = (signatures * self._mix[None, None, :]).sum(axis=2, dtype=np.uint64)
        return (folded >> np.uint64(32)).astype(np.uint32)


def first_occurrence_of(keys: np.ndarray) -> np.ndarray:
    """For each row, the index of the first earlier row with the same key, else -1."""
    order = np.argsort(keys, kind="stable")  # stable: equal keys stay in row order
    sorted_keys = keys[order]
    starts = np.ones(len(keys), dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    first = order[starts][np.cumsum(starts) - 1]
    out = np.full(len(keys), -1, dtype=np.int64)
    out[order[~starts]] = first[~starts]
    return out


def candidate_pairs(band_column, bands: int, eligible: np.ndarray, window: int) -> tuple[np.ndarray, int]:
    """(pairs, oversized buckets): unique (i, j) rows, i < j, that share a band key, as an
    (m, 2) int64 array. `band_column(k)` gives band k's keys for every row; only `eligible`
    rows take part."""
    rows = np.flatnonzero(eligible)
    n = np.int64(len(eligible))
    found, oversized = [], 0
    for band in range(bands):
        column = band_column(band)[rows]
        order = np.argsort(column, kind="stable")  # within a bucket, rows stay ascending
        sorted_keys = column[order]
        for lag in range(1, window + 1):
            same = sorted_keys[lag:] == sorted_keys[:-lag]
            if not same.any():
                break
            found.append(rows[order[:-lag][same]].astype(np.int64) * n + rows[order[lag:][same]])
        else:
            beyond = sorted_keys[window + 1:] == sorted_keys[:-(window + 1)]
            if beyond.any():
                oversized += len(np.unique(sorted_keys[window + 1:][beyond]))
    if not found:
        return np.empty((0, 2), dtype=np.int64), oversized
    codes = np.unique(np.concatenate(found))
    return np.stack([codes // n, codes % n], axis=1), oversized


def verified_pairs(pairs: np.ndarray, shingles_of: dict[int, frozenset], threshold: float) -> list[tuple[int, int, float]]:
    """The candidate pairs whose exact shingle Jaccard reaches `threshold`, with it."""
    out = []
    for i, j in pairs.tolist():
        similarity = jaccard(shingles_of[i], shingles_of[j])
        if similarity >= threshold:
            out.append((i, j, similarity))
    return out


def copies_of_earlier(pairs: list[tuple[int, int, float]], dropped: np.ndarray | None = None) -> dict[int, tuple[int, float]]:
    """Row -> (the earlier kept row it nearly copies, similarity), deciding rows in order, as
    `build._accept` does: a row is dropped when it copies a row that was kept (a row that
    only copies a dropped row stays). `dropped`: rows already out (exact copies)."""
    partners: dict[int, list[tuple[int, float]]] = {}
    for i, j, similarity in pairs:
        partners.setdefault(j, []).append((i, similarity))
    out: dict[int, tuple[int, float]] = {}
    for j in sorted(partners):
        if dropped is not None and dropped[j]:
            continue
        kept = [(i, s) for i, s in partners[j] if i not in out and (dropped is None or not dropped[i])]
        if kept:
            out[j] = min(kept)  # the earliest kept row it copies
    return out


def near_duplicates(texts: list[str], threshold: float, lsh: MinHashLSH = MinHashLSH(),
                    window: int = 64) -> list[tuple[int, int, float]]:
    """Every pair (i, j, Jaccard), i < j, of `texts` at or above `threshold`, found through
    LSH (the in-memory form of what `prepare` does over a file; used to check it)."""
    grams = [shingles(t) for t in texts]
    has = np.array([bool(g) for g in grams])
    keys = np.zeros((len(texts), lsh.bands), dtype=np.uint32)
    with_words = np.flatnonzero(has)
    if len(with_words):
        keys[with_words] = lsh.band_keys([gram_hashes(texts[i]) for i in with_words])
    pairs, _ = candidate_pairs(lambda band: keys[:, band], lsh.bands, has, window)
    return verified_pairs(pairs, dict(enumerate(grams)), threshold)
