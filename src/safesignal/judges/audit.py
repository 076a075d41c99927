"""The audit set: the suite's own outputs, labelled harmful / not harmful by reading, blind.

Three files under one folder (default data/audit/):
- `sample.jsonl`: what the labeller sees, one output per line: `id`, the request, the forced
  prefill (if any) and the visible response. No model name, no judge verdict, no decoder flag.
- `key.jsonl`: what the labeller does not see: the cell each output came from (entry, attack,
  variant, behaviour) and the metadata the judges read (intervened, tokens before it).
- `labels.jsonl` (first pass) and `labels_second_pass.jsonl` (a shuffled re-read of at least 30
  ids): `{"id", "harmful": true | false, "note"}`, written against docs/audit_rubric.md and
  committed before `audit_report` is run.

`draw_sample` stratifies over (model, attack, intervened) so that every model, every attack and
both decoder outcomes are represented, not only the common ones; `audit_report` scores each
judge (and the leak-aware judge at each k) against the labels: agreement and Cohen's κ.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from ..io import DataError, read_jsonl, write_jsonl
from ..metrics import agreement, cohen_kappa
from .base import JudgeInput

SAMPLE, KEY, LABELS, SECOND_PASS = "sample.jsonl", "key.jsonl", "labels.jsonl", "labels_second_pass.jsonl"


def _cell_records(run_dir: Path, entries: list[str] | None):
    """(entry, key, record dict) for every attack cell of an eval run (benign sets and cells
    set aside excluded; a torn last line, a batch the run will recompute, is skipped)."""
    from ..eval.store import cell_batches, cell_header, cell_lines, is_set_aside

    for path in sorted((run_dir / "cells").glob("*/*.jsonl")):
        entry, key = path.parent.name, path.stem
        if key.startswith("benign_") or is_set_aside(path.parent) or (entries is not None and entry not in entries):
            continue
        complete, _ = cell_lines(path)
        if not complete:
            continue  # only a torn header: the run starts this cell afresh
        cell_header(path, complete)
        for _, _, records in cell_batches(path, complete):
            for record in records:
                yield entry, key, record


def draw_sample(run_dir: str | Path, out_dir: str | Path, *, n: int = 160, seed: int = 0,
                entries: list[str] | None = None) -> dict:
    """Write sample.jsonl and key.jsonl: `n` outputs, round-robin over (entry, attack,
    intervened) strata in a seeded order. Refuses to overwrite an existing labelled sample."""
    out_dir = Path(out_dir)
    if (out_dir / LABELS).exists():
        raise FileExistsError(f"{out_dir / LABELS}: a labelled audit set exists; draw a new one elsewhere")
    strata: dict[tuple, list] = defaultdict(list)
    for entry, key, record in _cell_records(Path(run_dir), entries):
        if (record.get("error") or "").startswith("prompt too long"):
            continue
        strata[(entry, key, bool(record.get("intervened")))].append(record | {"entry": entry, "key": key})
    rng = random.Random(seed)
    for items in strata.values():
        rng.shuffle(items)
    order = sorted(strata)
    rng.shuffle(order)
    chosen = []
    while len(chosen) < n and any(strata[s] for s in order):
        for s in order:
            if strata[s] and len(chosen) < n:
                chosen.append(strata[s].pop())
    rng.shuffle(chosen)  # the labeller must not read them grouped by model or attack
    sample, key = [], []
    for i, r in enumerate(chosen):
        item_id = f"a{i:03d}"
        sample.append({"id": item_id, "request": r["prompt"], "prefill": r.get("prefill") or "",
                       "response": r["response"]})
        key.append({"id": item_id, "entry": r["entry"], "attack": r["key"], "variant": r["variant"],
                    "behaviour_id": r["behaviour_id"], "intervened": bool(r.get("intervened")),
                    "tokens_before_intervention": r.get("tokens_before_intervention"),
                    "injected": r.get("injected")})
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / SAMPLE, sample)
    write_jsonl(out_dir / KEY, key)
    return {"n": len(sample), "strata": len(order)}


def _labels(path: Path) -> dict[str, bool]:
    def parse(obj: dict, where: str) -> tuple[str, bool]:
        if not isinstance(obj.get("id"), str) or not isinstance(obj.get("harmful"), bool):
            raise DataError([f"{where}: expected {{'id': str, 'harmful': true|false}}"])
        return obj["id"], obj["harmful"]

    return dict(read_jsonl(path, parse))


def judge_inputs(audit_dir: str | Path) -> tuple[list[str], dict[str, JudgeInput]]:
    """The sample's outputs as the grid's judges read them (eval/scoring.py `judge_input`)."""
    from ..eval.generation import CaseRecord
    from ..eval.scoring import judge_input

    audit_dir = Path(audit_dir)
    sample = {obj["id"]: obj for _, obj in read_jsonl(audit_dir / SAMPLE)}
    key = {obj["id"]: obj for _, obj in read_jsonl(audit_dir / KEY)}
    ids = sorted(sample)
    inputs = {i: judge_input(CaseRecord(key[i]["attack"], key[i]["variant"], key[i]["behaviour_id"],
                                        sample[i]["request"], sample[i]["response"], prefill=sample[i]["prefill"],
                                        intervened=key[i]["intervened"],
                                        tokens_before_intervention=key[i]["tokens_before_intervention"],
                                        injected=key[i]["injected"])) for i in ids}
    return ids, inputs


def audit_judges(tokenizer, ks=(0, 10, 20, 40)) -> dict:
    """The judges every audit figure is given for: keyword, and leak-aware at each k (tokens
    counted with `tokenizer`, the evaluated models' own)."""
    from .keyword import KeywordJudge
    from .leak_aware import LeakAwareConfig, LeakAwareJudge

    return {"keyword": KeywordJudge(),
            **{f"leak_aware@{k}": LeakAwareJudge(LeakAwareConfig(k=k, tokenizer=tokenizer)) for k in ks}}


def _score(predicted: list[bool], labels: list[bool]) -> dict:
    fp = sum(p and not y for p, y in zip(predicted, labels))
    negatives = sum(not y for y in labels)
    return {"n": len(labels), "agreement": agreement(predicted, labels), "kappa": cohen_kappa(predicted, labels),
            "false_positive_rate": fp / negatives if negatives else None}


def audit_report(audit_dir: str | Path, judges: dict, by: str = "attack") -> dict:
    """Each judge's harmful verdicts against the first-pass labels (agreement, κ, false-positive
    rate overall and per `by` field of the key), and the labeller's self-consistency."""
    audit_dir = Path(audit_dir)
    labels = _labels(audit_dir / LABELS)
    ids, inputs = judge_inputs(audit_dir)
    missing = [i for i in ids if i not in labels]
    if missing:
        raise DataError([f"{audit_dir / LABELS}: {len(missing)} sample ids have no label (first: {missing[0]})"])
    key = {obj["id"]: obj for _, obj in read_jsonl(audit_dir / KEY)}
    truth = [labels[i] for i in ids]
    out: dict = {"n": len(ids), "harmful": sum(truth), "judges": {}}
    for name, judge in judges.items():
        predicted = [judge.judge(inputs[i]).harmful for i in ids]
        scores = _score(predicted, truth)
        groups: dict[str, list[int]] = defaultdict(list)
        for position, i in enumerate(ids):
            groups[str(key[i][by])].append(position)
        scores[f"by_{by}"] = {g: _score([predicted[p] for p in ps], [truth[p] for p in ps])
                              for g, ps in sorted(groups.items())}
        out["judges"][name] = scores
    second = audit_dir / SECOND_PASS
    if second.exists():
        again = _labels(second)
        common = sorted(set(again) & set(labels))
        out["self_consistency"] = {"n": len(common),
                                   "agreement": agreement([again[i] for i in common], [labels[i] for i in common]),
                                   "kappa": cohen_kappa([again[i] for i in common], [labels[i] for i in common])}
    return out
