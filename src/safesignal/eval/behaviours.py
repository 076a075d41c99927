"""The behaviours an attack is tried on: named pools, and the one seeded subset every model gets.

Pools (evaluation-only sources, DESIGN.md §Data):
- "harmful": AdvBench (520) and HarmBench test, functional category standard (159);
- "advbench": AdvBench alone (its rows carry the "Sure, here is" `target`);
- "prefill_pairs": the prefill-evaluation third of the pyrit many-shot pairs whose answer is
  harmful (`response` is the real harmful answer prefill attacks cut).

`subset(pool, n, seed)` draws the same behaviours for every model and policy: it depends on
the pool's contents, `n` and `seed` only.
"""

from __future__ import annotations

import random
from functools import lru_cache

from ..attacks.base import POOLS, behaviour_id
from ..data import sources


def _with_ids(items: list[dict], prefix: str) -> list[dict]:
    """A stable id per behaviour: the source's own id, else a hash of the normalised prompt;
    a prompt that occurs again (pyrit has one question with three different answers) gets
    ":2", ":3" ... in pool order, so every behaviour is counted on its own."""
    out, seen = [], {}
    for item in items:
        if not item.get("id"):
            base = behaviour_id({"prompt": item["prompt"], "source": prefix})
            seen[base] = seen.get(base, 0) + 1
            item = dict(item, id=base if seen[base] == 1 else f"{base}:{seen[base]}")
        out.append(item)
    return out


@lru_cache(maxsize=None)
def _pool(name: str) -> tuple[dict, ...]:
    if name == "advbench":
        return tuple(_with_ids(sources.advbench(), "advbench"))
    if name == "harmful":
        standard = sources.harmbench("test", functional="standard")
        return tuple(_with_ids(sources.advbench(), "advbench") + _with_ids(standard, "harmbench"))
    if name == "prefill_pairs":
        # Answers of at least PREFILL_MIN_WORDS words hold k ≤ 40 tokens for any BPE vocabulary
        # (a word is at least one token), so prefill_5 ... prefill_40 test one population.
        pairs = [p for p in sources.prefill_pairs() if len(p["response"].split()) >= PREFILL_MIN_WORDS]
        return tuple(_with_ids(pairs, "pyrit"))
    if name == "contrast_unsafe":
        from ..data.contrast import contrast_prompts

        return tuple({"id": r["id"], "prompt": r["prompt"], "source": "xstest_style", "kind": r["kind"]}
                     for r in contrast_prompts(label="unsafe"))
    raise KeyError(f"unknown behaviour pool {name!r}; known: {POOLS}")


PREFILL_MIN_WORDS = 40


def pool(name: str) -> list[dict]:
    return [dict(item) for item in _pool(name)]


def subset(name: str, n: int | None, seed: int) -> list[dict]:
    """`n` behaviours of pool `name` drawn with `seed` (all of them, in pool order, when n is
    None or at least the pool's size)."""
    items = pool(name)
    if n is None or n >= len(items):
        return items
    if n < 1:
        raise ValueError(f"n: must be ≥ 1, got {n}")
    chosen = sorted(random.Random(f"{name}/{seed}").sample(range(len(items)), n))
    return [items[i] for i in chosen]


def subset_per_source(name: str, counts: dict[str, int], seed: int) -> list[dict]:
    """`counts[source]` behaviours of each source of pool `name`, each drawn with `seed`
    (e.g. {"advbench": 200, "harmbench_test": 159}); pool order is kept."""
    items = pool(name)
    sources_present = {item.get("source") for item in items}
    unknown = sorted(set(counts) - sources_present)
    if unknown:
        raise ValueError(f"behaviour pool {name!r} has no source {unknown}; it has {sorted(sources_present)}")
    chosen = []
    for source, n in counts.items():
        members = [i for i, item in enumerate(items) if item.get("source") == source]
        if n > len(members):
            raise ValueError(f"behaviour pool {name!r}: {n} {source} behaviours asked, {len(members)} exist")
        chosen += random.Random(f"{name}/{source}/{seed}").sample(members, n)
    return [items[i] for i in sorted(chosen)]


def source_counts(items: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.get("source", "?")] = counts.get(item.get("source", "?"), 0) + 1
    return counts
