"""`safesignal merge`: one results file from several runs of the same models.

The embedded default is measured by several runs (the standard suite, the adaptive attacks,
the schedule-aware evasion, the fine-tuning attacks), each with its own budget and resume
directory; DESIGN.md §Results file asks for all of them in one `results.json`. Merging is
conservative, so a merged figure still means what it meant in its own file:

- an entry name shared by two files must be the same checkpoint, decoding and decision policy
  (the SafetyPolicy fields that decide a verdict over the tokens each run generated, as far as
  both files record them), and the files must use the same judges and leak-aware k; otherwise
  the merge is refused, naming both files and the field;
- files listed first win: an attack an earlier file measured on an entry is kept, the later
  file's measurement of it is counted in `merge.shadowed` and dropped;
- an attack measured on another behaviour pool, or with another configuration (a larger search
  budget, other variants), than the one the merged file already holds under its name is kept
  under `<attack>@<file stem>` with its own pool, never mixed with the first;
- every attack entry names its `source` file, and `sources` keeps each file's command, date,
  machine, wall time and provenance.
"""

from __future__ import annotations

import datetime
from dataclasses import fields
from pathlib import Path

from ..decoding.policy import SafetyPolicy
from .results import FORMAT, VERSION, load_results

# Fields that bound how long a response or prompt may be, not what a check decides: runs with
# different generation lengths store different values (the refusal's length follows max_new_tokens).
LENGTH_FIELDS = frozenset({"refusal_max_new_tokens", "max_prompt_tokens"})
ENTRY_IDENTITY = ("checkpoint", "decoding")
# Top-level fields that describe one run; the merged file keeps them per source instead.
RUN_FIELDS = ("command", "created", "config_name", "config", "machine", "wall_seconds", "reused_batches", "provenance")


class MergeError(ValueError):
    """Two results files disagree on what a shared name means; the message names both and the field."""


def merge_results(paths, command: str = "safesignal merge") -> dict:
    """The merged results of the files at `paths` (listed first wins; see the module docstring)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise MergeError("merge: give at least one results file")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise MergeError(f"merge: two files share a name ({', '.join(map(str, paths))}): a renamed attack is keyed "
                         "by its file's name, so give each file its own")
    loaded = [(path, load_results(path)) for path in paths]
    first_path, first = loaded[0]
    merged = {"format": FORMAT, "version": VERSION,
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": command, "machine": _common(r.get("machine") for _, r in loaded),
              "wall_seconds": sum(r.get("wall_seconds") or 0 for _, r in loaded),
              "provenance": first.get("provenance", {}),
              "sources": [_source(path, results) for path, results in loaded],
              "behaviours": {}, "models": {}, "merge": {"shadowed": [], "renamed": []}}
    origin: dict[str, tuple[Path, int | None]] = {}  # entry name -> the file it first came from, and its span
    held_configs: dict[str, dict | None] = {}  # attack key -> the configuration it was measured with
    for path, results in loaded:
        _check_judges(first_path, first, path, results)
        span = (results.get("config") or {}).get("max_new_tokens")
        for key, value in results.items():
            if key not in RUN_FIELDS and key not in ("behaviours", "models") and key not in merged:
                merged[key] = value
        pools = results.get("behaviours") or {}
        configs = attack_configs(results)
        for name, entry in (results.get("models") or {}).items():
            if name in origin:
                _check_entry(name, origin[name], merged["models"][name], (path, span), entry)
            else:
                origin[name] = (path, span)
                merged["models"][name] = {k: v for k, v in entry.items() if k != "attacks"} | {"attacks": {}}
            target = merged["models"][name]
            for field, value in entry.items():
                target.setdefault(field, value)
            for attack_name, attack in (entry.get("attacks") or {}).items():
                key = _attack_key(merged, held_configs, attack_name, pools.get(attack_name),
                                  configs.get(attack_name), path)
                if key in target["attacks"]:
                    merged["merge"]["shadowed"].append({"entry": name, "attack": attack_name, "file": str(path),
                                                        "kept_from": target["attacks"][key]["source"]})
                    continue
                target["attacks"][key] = {**attack, "source": path.stem}
    return merged


def attack_configs(results: dict) -> dict[str, dict]:
    """Each attack's configuration (results key -> its spec's `config`) as the run's grid gave it;
    empty for a file without its grid (a merged file keeps its runs' grids under `sources`)."""
    specs = (results.get("config") or {}).get("attacks") or []
    return {spec.get("key") or spec["attack"]: spec.get("config") or {} for spec in specs if isinstance(spec, dict)}


def _attack_key(merged: dict, held_configs: dict, attack_name: str, pool, config: dict | None, path: Path) -> str:
    """The name an attack from `path` is kept under: its own, unless the merged file already holds
    that name measured on another behaviour pool or with another configuration (where both files
    record one)."""
    held = merged["behaviours"]
    same_pool = pool is None or held.get(attack_name, pool) == pool
    known = held_configs.get(attack_name)
    same_config = known is None or config is None or known == config
    if same_pool and same_config:
        if pool is not None:
            held.setdefault(attack_name, pool)
        if config is not None:
            held_configs.setdefault(attack_name, config)
        return attack_name
    key = f"{attack_name}@{path.stem}"
    if key not in held:
        held[key] = pool
        held_configs[key] = config
        merged["merge"]["renamed"].append({"attack": attack_name, "as": key, "file": str(path),
                                           "why": "behaviour pool" if not same_pool else "configuration"})
    return key


def _source(path: Path, results: dict) -> dict:
    return {"file": str(path), "name": path.stem, **{k: results[k] for k in RUN_FIELDS if k in results}}


def _check_judges(first_path: Path, first: dict, path: Path, results: dict) -> None:
    for field in ("leak_k", "headline_judge"):
        if results.get(field) != first.get(field):
            raise MergeError(f"{path}: field '{field}' is {results.get(field)!r} but {first_path} has "
                             f"{first.get(field)!r}: ASRs judged differently cannot share a file")
    names, first_names = sorted(results.get("judges") or {}), sorted(first.get("judges") or {})
    if names != first_names:
        raise MergeError(f"{path}: field 'judges' names {names} but {first_path} names {first_names}")


def decision_policy(entry: dict, span: int | None = None) -> dict:
    """The stored SafetyPolicy fields of an entry that decide verdicts over a run that generated
    up to `span` tokens: a tail with no check inside the span reads as none (`SafetyPolicy.within`),
    so a run at 128 tokens matches one under the same policy without the tail. A field an older
    file lacks is left out, not filled with today's default: a default may change after the file
    was written."""
    stored = entry.get("decoder_policy") or {}
    known = {f.name for f in fields(SafetyPolicy)}
    values = {k: v for k, v in stored.items() if k in known and k not in LENGTH_FIELDS}
    if span and values.get("annealing_tail_period"):
        try:
            narrowed = SafetyPolicy(**{k: v for k, v in stored.items() if k in known}).within(span)
        except (TypeError, ValueError):
            return values  # not a policy this version can build: compared as stored
        values["annealing_tail_period"] = narrowed.annealing_tail_period
    return values


def _check_entry(name: str, first_origin: tuple[Path, int | None], first: dict, origin: tuple[Path, int | None],
                 entry: dict) -> None:
    (first_path, first_span), (path, span) = first_origin, origin
    for field in ENTRY_IDENTITY:
        if entry.get(field) != first.get(field):
            raise MergeError(f"{path}: entry {name!r} field '{field}' is {entry.get(field)!r} but {first_path} has "
                             f"{first.get(field)!r}: rename one of the entries")
    if first.get("decoding") != "strategic":
        return  # a plainly decoded entry's policy decides nothing
    mine, theirs = decision_policy(entry, span), decision_policy(first, first_span)
    differ = [f for f in mine if f in theirs and mine[f] != theirs[f]]
    if differ:
        f = differ[0]
        raise MergeError(f"{path}: entry {name!r} field 'decoder_policy.{f}' is {mine[f]!r} but {first_path} has "
                         f"{theirs[f]!r}: rename one of the entries")


def _common(values) -> str:
    distinct = sorted({str(v) for v in values if v})
    return distinct[0] if len(distinct) == 1 else ("; ".join(distinct) if distinct else "")
