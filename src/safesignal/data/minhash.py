"""MinHash + LSH: near-duplicate candidates among millions of prompts in bounded memory.

`dedup.PromptIndex` answers "does this prompt (nearly) copy one of yours?" exactly, for a
reference set held in memory (the evaluation prompts). Deduplicating a million training
prompts among themselves that way would keep every prompt's shingle set (about a kilobyte
each). Here each prompt keeps a MinHash signature of `bands * rows` 16-bit values (192 bytes
with the defaults), and a pair is compared only when

1. one band (`rows` consecutive signature values) agrees, the LSH step: a pair at Jaccard s
   gets there with probability 1 - (1 - s^rows)^bands (`candidate_probability`; the defaults,
   32 bands of 3, give 0.986 at s = 0.5, 0.9993 at 0.6, 0.23 at 0.2); and
2. at least `MIN_AGREEMENT` of all signature values agree (an estimate of s from every
   permutation, computed in numpy on the candidate pairs): prompts that share only a frequent
   opening ("how do I ...") meet in some band often enough, at a million rows, to give tens
   of millions of band collisions; this keeps the few that can be near copies (a pair at
   s = 0.5 fails it with probability ~1e-4);

and then checked with the exact definition (`dedup.shingles` + `dedup.jaccard` >= the
threshold) on the shingles of those rows only. LSH decides only what gets compared: it can
miss a pair (recall), never invent one. The same shingles as `dedup.shingles` are hashed
(crc32 of the words joined by spaces), so the estimate and the check measure the same sets.

A band value shared by more than `window` + 1 prompts (a bucket filled by frequent words) is
not expanded into all its pairs: each prompt is paired with the `window` before it there;
`oversized_buckets` counts where that happened. Exact copies never reach a bucket: the
caller finds them first, by key, and passes only first occurrences as `eligible`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from .dedup import jaccard, shingles

PRIME = 4294967311  # 2^32 + 15: (a * x + b) mod PRIME with a, x, b < 2^32 never overflows uint64
MAX_GRAMS_PER_BLOCK = 1 << 15  # bounds the (grams x permutations) matrix of one block to ~25 MB
MIN_AGREEMENT = 0.3  # of the signature: below it a pair is not checked (step 2 above)
PAIR_BLOCK = 1 << 16  # candidate pairs compared at once (bounds the gathered signatures to ~25 MB)


def gram_hashes(text: str) -> np.ndarray:
    """The crc32 of each of `dedup.shingles(text)`, as uint32 (empty for a text without words)."""
    return np.fromiter((zlib.crc32(" ".join(g).encode()) for g in shingles(text)), dtype=np.uint32)


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that a pair at this Jaccard similarity shares at least one band."""
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
        # Odd 64-bit multipliers fold a band's values into one key (uint64 arithmetic wraps).
        object.__setattr__(self, "_mix", rng.integers(1, 1 << 62, size=self.rows, dtype=np.uint64) * 2 + 1)

    def signatures(self, hashes: list[np.ndarray]) -> np.ndarray:
        """(len(hashes), bands * rows) uint16 MinHash signatures (each minimum's low 16 bits:
        two different minima agree by chance once in 65,536); every array must be non-empty."""
        out = np.empty((len(hashes), self.bands * self.rows), dtype=np.uint16)
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
            out[start:stop] = np.minimum.reduceat(permuted, offsets, axis=0).astype(np.uint16)
            start = stop
        return out

    def band_keys(self, signatures: np.ndarray, band: int) -> np.ndarray:
        """One uint64 key per signature row for `band`."""
        values = signatures[:, band * self.rows:(band + 1) * self.rows].astype(np.uint64)
        return (values * self._mix[None, :]).sum(axis=1, dtype=np.uint64)

    def candidate_pairs(self, signatures: np.ndarray, eligible: np.ndarray, window: int) -> tuple[np.ndarray, int]:
        """(pairs, oversized buckets): unique (i, j) rows, i < j, as an (m, 2) int64 array, that
        share a band and agree on at least MIN_AGREEMENT of their signatures. Only `eligible`
        rows take part."""
        rows = np.flatnonzero(eligible)
        n = np.int64(len(eligible))
        found, oversized = [], 0
        for band in range(self.bands):
            keys = self.band_keys(signatures, band)[rows]
            order = np.argsort(keys, kind="stable")  # within a bucket, rows stay ascending
            sorted_keys = keys[order]
            for lag in range(1, window + 1):
                same = sorted_keys[lag:] == sorted_keys[:-lag]
                if not same.any():
                    break
                first, second = rows[order[:-lag][same]], rows[order[lag:][same]]
                agree = _agreement(signatures, first, second) >= MIN_AGREEMENT
                found.append(first[agree].astype(np.int64) * n + second[agree])
            else:
                beyond = sorted_keys[window + 1:] == sorted_keys[:-(window + 1)]
                if beyond.any():
                    oversized += len(np.unique(sorted_keys[window + 1:][beyond]))
        if not found:
            return np.empty((0, 2), dtype=np.int64), oversized
        codes = np.unique(np.concatenate(found))
        return np.stack([codes // n, codes % n], axis=1), oversized


def _agreement(signatures: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Fraction of equal signature values of each pair, a block of pairs at a time."""
    out = np.empty(len(first))
    for start in range(0, len(first), PAIR_BLOCK):
        stop = start + PAIR_BLOCK
        out[start:stop] = (signatures[first[start:stop]] == signatures[second[start:stop]]).mean(axis=1)
    return out


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
    has = np.array([bool(g) for g in grams], dtype=bool)
    signatures = np.zeros((len(texts), lsh.bands * lsh.rows), dtype=np.uint16)
    with_words = np.flatnonzero(has)
    if len(with_words):
        signatures[with_words] = lsh.signatures([gram_hashes(texts[i]) for i in with_words])
    pairs, _ = lsh.candidate_pairs(signatures, has, window)
    return verified_pairs(pairs, dict(enumerate(grams)), threshold)
