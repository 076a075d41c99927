"""The audit set: stratified blind sample, then judges scored against hand labels."""

from __future__ import annotations

import json

import pytest

from safesignal.eval.generation import CaseRecord
from safesignal.eval.store import CellFile
from safesignal.judges import KeywordJudge
from safesignal.judges.audit import KEY, LABELS, SAMPLE, SECOND_PASS, audit_report, draw_sample

REFUSAL = "I'm sorry, I cannot help with that."


def _run(tmp_path):
    run = tmp_path / "run"
    for entry in ("base", "cls"):
        for key in ("direct", "prefill_sure", "benign_edgy"):
            cell = CellFile(run / "cells" / entry / f"{key}.jsonl", "f")
            records = [CaseRecord(key, key, f"b{i}", f"request {i}", REFUSAL if i % 2 else "Step 1: do it",
                                  intervened=(entry == "cls" and i % 2 == 1),
                                  tokens_before_intervention=0 if entry == "cls" and i % 2 else None)
                       for i in range(6)]
            cell.add(0, records)
    return run


def test_sample_is_stratified_blind_and_never_overwrites_labels(tmp_path):
    run, out = _run(tmp_path), tmp_path / "audit"
    info = draw_sample(run, out, n=12, seed=0)
    sample = [json.loads(line) for line in (out / SAMPLE).read_text().splitlines()]
    key = {k["id"]: k for k in map(json.loads, (out / KEY).read_text().splitlines())}
    assert info["n"] == 12 and len(sample) == 12
    assert all(set(s) == {"id", "request", "prefill", "response"} for s in sample)  # no model, no verdict
    strata = {(key[s["id"]]["entry"], key[s["id"]]["attack"], key[s["id"]]["intervened"]) for s in sample}
    # base: 2 attacks x not intervened; cls: 2 attacks x both outcomes = 6 strata, all present
    assert len(strata) == 6 and not any(k["attack"].startswith("benign") for k in key.values())
    (out / LABELS).write_text("")
    with pytest.raises(FileExistsError):
        draw_sample(run, out, n=12)


def test_sample_skips_set_aside_cells_and_torn_lines(tmp_path):
    run, out = _run(tmp_path), tmp_path / "audit"
    (run / "cells" / "cls").rename(run / "cells" / "cls.stale-0123456789abcdef")
    with open(run / "cells" / "base" / "direct.jsonl", "a") as f:
        f.write('{"batch": 1, "records": [{"att')  # a batch the kill cut: the run recomputes it
    info = draw_sample(run, out, n=24, seed=0)
    key = [json.loads(line) for line in (out / KEY).read_text().splitlines()]
    assert info["n"] == 12 and {k["entry"] for k in key} == {"base"}  # 2 attacks x 6 rows, the torn one not among them


def test_audit_report_against_labels_by_hand(tmp_path):
    run, out = _run(tmp_path), tmp_path / "audit"
    draw_sample(run, out, n=8, seed=1)
    sample = [json.loads(line) for line in (out / SAMPLE).read_text().splitlines()]
    # The labeller disagrees with the keyword rule on exactly the first item.
    labels = [{"id": s["id"], "harmful": ("Step 1" in s["response"]) != (i == 0)} for i, s in enumerate(sample)]
    (out / LABELS).write_text("".join(json.dumps(x) + "\n" for x in labels))
    # The second pass re-reads 4 items and changes its mind on one of them.
    again = [dict(x) for x in labels[:4]]
    again[1]["harmful"] = not again[1]["harmful"]
    (out / SECOND_PASS).write_text("".join(json.dumps(x) + "\n" for x in again))
    report = audit_report(out, {"keyword": KeywordJudge()})
    assert report["n"] == 8
    assert report["judges"]["keyword"]["agreement"] == 7 / 8
    first, second = [x["harmful"] for x in labels[:4]], [x["harmful"] for x in again]
    p_o = 3 / 4  # kappa by hand from the two passes' marginals
    p_e = (sum(first) / 4) * (sum(second) / 4) + (1 - sum(first) / 4) * (1 - sum(second) / 4)
    assert report["self_consistency"]["n"] == 4 and report["self_consistency"]["agreement"] == p_o
    assert report["self_consistency"]["kappa"] == pytest.approx((p_o - p_e) / (1 - p_e))
    assert set(report["judges"]["keyword"]["by_attack"]) == {"direct", "prefill_sure"}


def test_unlabelled_ids_are_reported(tmp_path):
    run, out = _run(tmp_path), tmp_path / "audit"
    draw_sample(run, out, n=4)
    first = json.loads((out / SAMPLE).read_text().splitlines()[0])["id"]
    (out / LABELS).write_text(json.dumps({"id": first, "harmful": True}) + "\n")
    with pytest.raises(ValueError, match="have no label"):
        audit_report(out, {"keyword": KeywordJudge()})


def test_cli_sample_keeps_to_the_named_entries(tmp_path):
    from safesignal.cli import main

    run, out = _run(tmp_path), tmp_path / "audit"
    assert main(["audit", "sample", "--run", str(run), "--dir", str(out), "--n", "30", "--entries", "base"]) == 0
    key = [json.loads(line) for line in (out / KEY).read_text().splitlines()]
    assert len(key) == 12 and {k["entry"] for k in key} == {"base"}
