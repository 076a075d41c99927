"""Reading a results file: the format check, and tolerant access to its optional parts.

The report reads the shape `safesignal eval` writes (DESIGN.md §Results file) and the older,
smaller shape of `safesignal demo`; everything beyond format and version is optional, so each
accessor returns an empty value for a missing or malformed part instead of raising.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

FORMAT = "safesignal-results"
VERSION = 1
DEFAULT_POLICY = "default"
DEFAULT_HEADLINE_JUDGE = "leak_aware"


class ResultsFormatError(ValueError):
    """The file is not a safesignal-results version 1 file; the message names file and field."""


def check_format(results, source: str) -> dict:
    if not isinstance(results, dict):
        raise ResultsFormatError(f"{source}: expected a JSON object at the top level, got {type(results).__name__}")
    if results.get("format") != FORMAT:
        raise ResultsFormatError(f"{source}: field 'format' is {results.get('format')!r}, expected {FORMAT!r}")
    if results.get("version") != VERSION:
        raise ResultsFormatError(f"{source}: field 'version' is {results.get('version')!r}, expected {VERSION}")
    if not isinstance(results.get("models", {}), dict):
        raise ResultsFormatError(f"{source}: field 'models' must be an object of model entries")
    return results


def load_results(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ResultsFormatError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    return check_format(results, str(path))


def part(obj, key) -> dict:
    """obj[key] when it is an object, else {} (a missing optional section)."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, dict) else {}


def items(obj, key) -> list:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, list) else []


def entries(results: dict) -> list[tuple[str, dict]]:
    return [(name, entry) for name, entry in part(results, "models").items() if isinstance(entry, dict)]


def policy_of(name: str, entry: dict) -> str:
    # Entry names of ablations are "<model>:<policy>"; the name decides when `policy` is absent.
    return str(entry.get("policy") or (name.split(":", 1)[1] if ":" in name else DEFAULT_POLICY))


def default_entries(results: dict) -> list[tuple[str, dict]]:
    return [(n, e) for n, e in entries(results) if policy_of(n, e) == DEFAULT_POLICY]


def ablation_entries(results: dict) -> list[tuple[str, dict]]:
    return [(n, e) for n, e in entries(results) if policy_of(n, e) != DEFAULT_POLICY]


def attacked_entries(results: dict) -> set[str]:
    """The fine-tuned checkpoints' entries (`safesignal attack finetune`: a curve's points after
    step 0); their ablations name them as `model`. The fine-tuning section shows them, the ASR
    tables do not."""
    names = set()
    for threats in part(part(results, "finetune"), "curves").values():
        for curve in (threats.values() if isinstance(threats, dict) else []):
            names |= {p.get("entry") for p in items(curve, "points") if isinstance(p, dict) and p.get("steps")}
    names.discard(None)
    return names


def without_attacked(results: dict, named: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """`named` less the fine-tuned checkpoints' entries and their ablations."""
    attacked = attacked_entries(results)
    return [(n, e) for n, e in named if not {n, model_of(n, e)} & attacked]


def model_of(name: str, entry: dict) -> str:
    return str(entry.get("model") or name.split(":", 1)[0])


def attacks_of(entry: dict) -> dict[str, dict]:
    return {name: attack for name, attack in part(entry, "attacks").items() if isinstance(attack, dict)}


def attack_names(named_entries: list[tuple[str, dict]]) -> list[str]:
    """Every attack any of the entries ran, in the order the file first lists them."""
    names: list[str] = []
    for _, entry in named_entries:
        names += [a for a in attacks_of(entry) if a not in names]
    return names


def headline_judge(results: dict) -> str:
    return str(results.get("headline_judge") or DEFAULT_HEADLINE_JUDGE)


def leak_k(results: dict):
    """The headline leak threshold k: top-level, else the judge's, else what the demo recorded."""
    if results.get("leak_k") is not None:
        return results["leak_k"]
    if part(part(results, "judges"), "leak_aware").get("k") is not None:
        return part(part(results, "judges"), "leak_aware")["k"]
    for _, entry in entries(results):
        for attack in attacks_of(entry).values():
            if attack.get("leak_tokens") is not None:
                return attack["leak_tokens"]
    return part(results, "demo").get("leak_tokens")


def refusal_sets(entry: dict) -> dict[str, dict]:
    """{"edgy": {n, rate, ci95, ...}, "heldout_benign": {...}} for an entry (sets it lacks are absent)."""
    detail = part(entry, "over_refusal_detail")
    sets = {name: dict(value) for name, value in detail.items() if isinstance(value, dict)}
    if "edgy" in sets and sets["edgy"].get("rate") is None:
        sets["edgy"]["rate"] = entry.get("over_refusal")
    if "edgy" not in sets and entry.get("over_refusal") is not None:
        sets["edgy"] = {"rate": entry["over_refusal"]}
    return sets


def upgrade_demo_shape(results: dict) -> tuple[dict, list[str]]:
    """A copy of `results` in eval's shape, and notes on what was changed to get there.

    `safesignal demo` wrote, per attack, `ci95` as the interval of the keyword ASR (not of
    asr_leak), and one flat {n, ci95} for the edgy set. Reading those fields by eval's
    meaning would put the keyword interval beside the leak-aware rate, so they move to the
    names eval uses and the leak-aware interval is computed from n with the same Wilson rule.
    """
    demo_attacks = [(entry, attack) for _, entry in entries(results) for attack in attacks_of(entry).values()
                    if "refusal_rate" in attack and "ci95_keyword" not in attack]
    flat_refusals = [entry for _, entry in entries(results)
                     if "n" in part(entry, "over_refusal_detail") and "edgy" not in part(entry, "over_refusal_detail")]
    if not demo_attacks and not flat_refusals:
        return results, []
    from ..evaluate import wilson_interval  # only the demo's older shape needs it (and torch with it)

    results = copy.deepcopy(results)
    for _, entry in entries(results):
        for attack in attacks_of(entry).values():
            if "refusal_rate" in attack and "ci95_keyword" not in attack:
                attack["ci95_keyword"] = attack.pop("ci95", None)
                if isinstance(attack.get("n"), int) and isinstance(attack.get("asr_leak"), (int, float)):
                    attack["ci95"] = list(wilson_interval(round(attack["asr_leak"] * attack["n"]), attack["n"]))
        detail = part(entry, "over_refusal_detail")
        if "n" in detail and "edgy" not in detail:
            entry["over_refusal_detail"] = {"edgy": {"n": detail["n"], "rate": entry.get("over_refusal"),
                                                     "ci95": detail.get("ci95")}}
    return results, ["demo-shaped file: its per-attack ci95 is the keyword ASR's interval and is shown as such; "
                     "the leak-aware intervals are Wilson intervals computed here from n and asr_leak"]
