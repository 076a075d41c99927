"""Exact and near-duplicate detection between prompt sets.

Train and evaluation prompts must be disjoint (DESIGN.md §Data), and "disjoint" has to
survive small edits: the same behaviour reworded by a different benchmark, a trailing
"Answer yes or no", a changed name. Prompts are compared on normalised text (exact) and on
word-3-gram Jaccard similarity (near): two prompts sharing half their 3-grams are treated as
copies. An inverted index over the reference set keeps this linear in practice. This module
is the definition; `minhash` finds the same pairs among millions of prompts (it proposes
candidates and checks them with `shingles` and `jaccard` from here).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable

from .sources import normalise

NEAR_DUPLICATE_JACCARD = 0.5
_WORD = re.compile(r"[a-z0-9]+")


def shingles(text: str, n: int = 3) -> frozenset[tuple[str, ...]]:
    """Word n-grams of lower-cased alphanumeric words (shorter texts give one n-gram)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a or not b:
        return 0.0
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared)


class PromptIndex:
    """A reference set of prompts that answers "is this prompt (nearly) one of yours?"."""

    def __init__(self, prompts: Iterable[str] = (), threshold: float = NEAR_DUPLICATE_JACCARD):
        self.threshold = threshold
        self._exact: set[str] = set()
        self._shingles: list[frozenset] = []
        self._postings: dict[tuple, list[int]] = defaultdict(list)
        for prompt in prompts:
            self.add(prompt)

    def __len__(self) -> int:
        return len(self._shingles)

    def add(self, prompt: str) -> None:
        self._exact.add(normalise(prompt))
        grams = shingles(prompt)
        index = len(self._shingles)
        self._shingles.append(grams)
        for gram in grams:
            self._postings[gram].append(index)

    def best_match(self, prompt: str) -> float:
        """Highest Jaccard similarity to any indexed prompt (1.0 for an exact normalised copy)."""
        if normalise(prompt) in self._exact:
            return 1.0
        grams = shingles(prompt)
        shared = Counter(i for gram in grams for i in self._postings.get(gram, ()))
        best = 0.0
        for i, count in shared.items():
            best = max(best, count / (len(grams) + len(self._shingles[i]) - count))
        return best

    def has_exact(self, prompt: str) -> bool:
        """An exact copy after normalisation (case, whitespace, punctuation)."""
        return normalise(prompt) in self._exact

    def contains(self, prompt: str) -> bool:
        """`best_match(prompt) >= threshold`, exactly, without walking every posting list.

        A prompt with g shingles can reach the threshold only with an indexed prompt that
        shares at least ceil(threshold * g) of them, so it shares at least one of any
        g - ceil(threshold * g) + 1 of them: probing the rarest that many skips the long
        lists of frequent openings ("how do i", "write a ..."), which made each check of a
        big training file cost a walk over most of the index."""
        if self.threshold <= 0:
            return True
        if normalise(prompt) in self._exact:
            return True
        grams = shingles(prompt)
        if not grams:
            return False
        needed = math.ceil(self.threshold * len(grams) - 1e-9)  # rounding may only lower it (probe more)
        rarest = sorted(grams, key=lambda gram: len(self._postings.get(gram, ())))[:len(grams) - needed + 1]
        candidates = {i for gram in rarest for i in self._postings.get(gram, ())}
        return any(jaccard(grams, self._shingles[i]) >= self.threshold for i in candidates)
