"""Intent pairs: training prompts that share their words and topic but differ in intent.

Why (issue "Embedded default v2"): the v1 refusal data taught "refuse anything that sounds
like X". A benign prompt and a malicious one that use the same words ("how do I torch a
creme brulee" / "how do I torch a rival's shop") can only be told apart by intent, so training
on both sides of such pairs teaches the boundary rather than the topic.

The families live in a data file (``resources/intent_pairs/intent_pairs.jsonl``: the malicious
templates are harmful text, and harmful text stays in data files). Each line is one family::

    {"family": "<kind>-NN", "kind": str, "benign": template, "malicious": template,
     "slots": {slot: [fills]}, "n": fills to draw}

Both templates of a family are filled from the same slot values (a template may use a subset
of the slots), so each draw is a pair. The families are ours, written for training only and
kept apart from the XSTest-style evaluation set (data/contrast.py): their own kind names,
their own frames, and no slot fill equals or nearly copies a contrast prompt or any other
evaluation prompt (tests/test_intent_pairs.py checks every fill with the near-duplicate rule;
the build's reserved index drops any that would).

``intent_pairs(seed)`` draws ``n`` fills per family with ``random.Random(seed)``; a side whose
text repeats an earlier draw (a template that ignores a slot) is kept once.
"""

from __future__ import annotations

import itertools
import random
import string
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..io import read_unique_jsonl
from .sources import normalise

PAIRS_FILE = Path(str(resources.files("safesignal").joinpath("resources", "intent_pairs", "intent_pairs.jsonl")))
FIELDS = ("family", "kind", "benign", "malicious", "slots", "n")
SOURCE = "intent_pairs"


def template_slots(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def _parse_family(family: dict, where: str) -> dict:
    missing = [f for f in FIELDS if f not in family]
    extra = sorted(set(family) - set(FIELDS))
    if missing or extra:
        raise ValueError(f"{where}: " + "; ".join(
            ([f"missing field(s) {missing}"] if missing else []) + ([f"unexpected field(s) {extra}"] if extra else [])))
    for name in ("family", "kind", "benign", "malicious"):
        if not isinstance(family[name], str) or not family[name].strip():
            raise ValueError(f"{where}: {name} must be a non-empty string")
    slots = family["slots"]
    if not isinstance(slots, dict) or not all(isinstance(v, list) and v and all(isinstance(s, str) for s in v)
                                              for v in slots.values()):
        raise ValueError(f"{where}: slots must map each slot name to a non-empty list of strings")
    for side in ("benign", "malicious"):
        unknown = sorted(template_slots(family[side]) - set(slots))
        if unknown:
            raise ValueError(f"{where}: {side} template uses slot(s) {unknown} that 'slots' does not define")
    unused = sorted(set(slots) - template_slots(family["benign"]) - template_slots(family["malicious"]))
    if unused:
        raise ValueError(f"{where}: slot(s) {unused} are used by neither template")
    if not isinstance(family["n"], int) or family["n"] < 1:
        raise ValueError(f"{where}: n must be a positive integer")
    return family


@lru_cache(maxsize=4)
def _load(path: Path, stamp: tuple[int, int]) -> tuple[dict, ...]:
    families, _ = read_unique_jsonl(path, _parse_family, "family")
    if not families:
        raise ValueError(f"{path}: no families")
    return tuple(families)


def load_families(path: Path | str | None = None) -> list[dict]:
    path = Path(path) if path is not None else PAIRS_FILE
    stat = path.stat()
    return [dict(f) for f in _load(path, (stat.st_mtime_ns, stat.st_size))]


def fills(family: dict) -> list[dict[str, str]]:
    """Every slot assignment of a family, in a fixed order (the tests check all of them)."""
    names = sorted(family["slots"])
    return [dict(zip(names, values)) for values in itertools.product(*(family["slots"][n] for n in names))]


def intent_pairs(seed: int = 0, path: Path | str | None = None) -> list[dict]:
    """Items {"prompt", "label" (0 benign, 1 malicious), "source": "intent_pairs", "kind",
    "family", "pair": "<family>/<draw>"}; both sides of a draw share "pair"."""
    rng = random.Random(seed)
    out, seen = [], set()
    for family in load_families(path):
        assignments = fills(family)
        for draw, values in enumerate(rng.sample(assignments, min(family["n"], len(assignments)))):
            for label, side in ((0, "benign"), (1, "malicious")):
                prompt = family[side].format(**values)
                key = normalise(prompt)
                if key in seen:
                    continue
                seen.add(key)
                out.append({"prompt": prompt, "label": label, "source": SOURCE, "kind": family["kind"],
                            "family": family["family"], "pair": f"{family['family']}/{draw}"})
    return out


__all__ = ["FIELDS", "PAIRS_FILE", "SOURCE", "fills", "intent_pairs", "load_families", "template_slots"]
