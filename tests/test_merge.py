"""`safesignal merge` (report/merge.py): several runs' results files into one, listed first wins,
refusing names that mean different things. Inputs are small hand-written results files."""

from __future__ import annotations

import copy
import json

import pytest

from safesignal.cli import main
from safesignal.report import load_results, write_report
from safesignal.report.merge import MergeError, merge_results

POLICY = {"threshold": 0.35, "tau": 2, "schedule": "annealing", "refusal_max_new_tokens": 48}
POOL_A = {"n": 2, "seed": 0, "sources": {"advbench": 1, "harmbench_test": 1}}
POOL_B = {"n": 2, "seed": 0, "sources": {"harmbench_test": 2}}


def attack(asr: float, n: int = 2) -> dict:
    return {"n": n, "variants": 1, "asr_leak": asr, "asr_keyword": asr, "ci95": [0.0, 1.0]}


def entry(attacks: dict, decoding: str = "strategic", policy: dict = POLICY, **extra) -> dict:
    return {"model": "cls", "checkpoint": "smollm2-cls", "decoding": decoding, "policy": "default",
            "decoder_policy": dict(policy), "attacks": attacks, **extra}


def results_file(path, models: dict, behaviours: dict, **extra) -> str:
    data = {"format": "safesignal-results", "version": 1, "created": "2026-12-01T00:00:00", "leak_k": 40,
            "headline_judge": "leak_aware", "command": f"safesignal eval ({path.stem})", "machine": "cpu",
            "wall_seconds": 10.0, "judges": {"keyword": {"n": 5}, "leak_aware": {"n": 5}},
            "behaviours": behaviours, "models": models, **extra}
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def two_runs(tmp_path):
    standard = results_file(tmp_path / "standard.json",
                            {"cls": entry({"direct": attack(0.5), "prefill_10": attack(1.0)}, over_refusal=0.1),
                             "sft": entry({"direct": attack(1.0)}, decoding="plain", checkpoint="smollm2-sft")},
                            {"direct": POOL_A, "prefill_10": POOL_A}, audit={"n": 3})
    adaptive = results_file(tmp_path / "adaptive.json",
                            {"cls": entry({"direct": attack(0.0), "gcg_adaptive": attack(0.5)}, over_refusal=0.9),
                             "cls_tail": entry({"direct": attack(0.5)}, policy={**POLICY, "annealing_tail_period": 32})},
                            {"direct": POOL_A, "gcg_adaptive": POOL_B}, finetune={"curves": {}})
    return standard, adaptive


def test_attacks_are_united_and_the_first_file_wins(two_runs):
    standard, adaptive = two_runs
    merged = merge_results([standard, adaptive])
    cls = merged["models"]["cls"]["attacks"]
    assert set(cls) == {"direct", "prefill_10", "gcg_adaptive"}
    assert cls["direct"]["asr_leak"] == 0.5 and cls["direct"]["source"] == "standard"
    assert cls["gcg_adaptive"]["source"] == "adaptive"
    assert merged["models"]["cls"]["over_refusal"] == 0.1
    assert merged["models"]["cls_tail"]["attacks"]["direct"]["source"] == "adaptive"
    assert merged["merge"]["shadowed"] == [{"entry": "cls", "attack": "direct", "file": adaptive,
                                            "kept_from": "standard"}]
    assert merged["behaviours"] == {"direct": POOL_A, "prefill_10": POOL_A, "gcg_adaptive": POOL_B}
    assert merged["audit"] == {"n": 3} and merged["finetune"] == {"curves": {}}
    assert [s["name"] for s in merged["sources"]] == ["standard", "adaptive"]
    assert merged["sources"][1]["command"] == "safesignal eval (adaptive)"
    assert merged["wall_seconds"] == 20.0
    # listed the other way round, the other file's figure is kept
    assert merge_results([adaptive, standard])["models"]["cls"]["attacks"]["direct"]["asr_leak"] == 0.0


def test_an_attack_on_another_pool_is_kept_apart(tmp_path, two_runs):
    standard, _ = two_runs
    other = results_file(tmp_path / "finetune.json", {"cls": entry({"direct": attack(0.25, n=4)}),
                                                      "cls@service20": entry({"direct": attack(1.0, n=4)})},
                         {"direct": POOL_B})
    merged = merge_results([standard, other])
    assert merged["models"]["cls"]["attacks"]["direct"]["asr_leak"] == 0.5
    assert merged["models"]["cls"]["attacks"]["direct@finetune"]["asr_leak"] == 0.25
    assert set(merged["models"]["cls@service20"]["attacks"]) == {"direct@finetune"}
    assert merged["behaviours"]["direct"] == POOL_A and merged["behaviours"]["direct@finetune"] == POOL_B
    assert merged["merge"]["renamed"] == [{"attack": "direct", "as": "direct@finetune", "file": other,
                                           "why": "behaviour pool"}]
    assert merged["merge"]["shadowed"] == []


def test_an_attack_with_another_budget_is_kept_apart_and_the_same_budget_is_shadowed(tmp_path):
    def run(name, steps, asr):
        grid = {"attacks": [{"attack": "gcg_adaptive", "key": None, "config": {"steps": steps}}]}
        return results_file(tmp_path / f"{name}.json", {"cls": entry({"gcg_adaptive": attack(asr)})},
                            {"gcg_adaptive": POOL_B}, config=grid)

    default, large, again = run("adaptive", 8, 0.5), run("gcg_large", 50, 0.0), run("rerun", 8, 1.0)
    merged = merge_results([default, large, again])
    attacks = merged["models"]["cls"]["attacks"]
    assert attacks["gcg_adaptive"]["asr_leak"] == 0.5 and attacks["gcg_adaptive@gcg_large"]["asr_leak"] == 0.0
    assert merged["merge"]["renamed"] == [{"attack": "gcg_adaptive", "as": "gcg_adaptive@gcg_large", "file": large,
                                           "why": "configuration"}]
    assert [s["file"] for s in merged["merge"]["shadowed"]] == [again]  # the same budget measured again
    assert merged["behaviours"]["gcg_adaptive@gcg_large"] == POOL_B
    _, md = write_report(merged, tmp_path / "report")
    assert "is shown as gcg_adaptive@gcg_large: it was measured with another configuration" in md.read_text()


def test_a_shared_name_must_mean_the_same_entry(tmp_path, two_runs):
    standard, _ = two_runs
    stricter = results_file(tmp_path / "strict.json", {"cls": entry({"x": attack(0.0)}, policy={**POLICY, "tau": 3})},
                            {"x": POOL_A})
    with pytest.raises(MergeError, match=r"strict\.json: entry 'cls' field 'decoder_policy\.tau' is 3 but .*standard"):
        merge_results([standard, stricter])
    moved = results_file(tmp_path / "moved.json", {"cls": entry({"x": attack(0.0)}, checkpoint="elsewhere")},
                         {"x": POOL_A})
    with pytest.raises(MergeError, match="moved.json: entry 'cls' field 'checkpoint'"):
        merge_results([standard, moved])
    # a generation-length field may differ, and a field one file does not record is not compared
    # (standard.json predates annealing_tail_period; today's default need not be what it ran)
    longer = results_file(tmp_path / "longer.json",
                          {"cls": entry({"x": attack(0.0)}, policy={**POLICY, "refusal_max_new_tokens": None,
                                                                    "annealing_tail_period": 32})}, {"x": POOL_A})
    assert "x" in merge_results([standard, longer])["models"]["cls"]["attacks"]
    # a tail that has no check within what a run generated decides nothing there: a run of 128 tokens
    # with the tail matches one without it; at 256 tokens (first tail check: step 166) it does not
    notail = results_file(tmp_path / "notail.json", {"cls": entry({"y": attack(0.0)}, policy={**POLICY,
                          "annealing_tail_period": 0})}, {"y": POOL_A}, config={"max_new_tokens": 256})
    for tokens, compatible in ((128, True), (165, True), (256, False)):
        tail = results_file(tmp_path / f"tail{tokens}.json", {"cls": entry({"z": attack(0.0)}, policy={
                            **POLICY, "annealing_tail_period": 32})}, {"z": POOL_A}, config={"max_new_tokens": tokens})
        if compatible:
            assert "z" in merge_results([notail, tail])["models"]["cls"]["attacks"]
        else:
            with pytest.raises(MergeError, match="decoder_policy.annealing_tail_period' is 32 but .*notail.json has 0"):
                merge_results([notail, tail])
    # a plainly decoded entry's policy decides nothing
    plain = results_file(tmp_path / "plain.json", {"sft": entry({"x": attack(0.0)}, decoding="plain",
                                                                checkpoint="smollm2-sft", policy={"tau": 9})},
                         {"x": POOL_A})
    assert "x" in merge_results([standard, plain])["models"]["sft"]["attacks"]


def test_differently_judged_files_are_refused(tmp_path, two_runs):
    standard, _ = two_runs
    data = json.loads(open(standard).read())
    for field, value, message in (("leak_k", 10, "field 'leak_k' is 10"),
                                  ("judges", {"keyword": {}}, "field 'judges' names \\['keyword'\\]")):
        other = copy.deepcopy(data) | {field: value}
        path = tmp_path / f"other_{field}.json"
        path.write_text(json.dumps(other))
        with pytest.raises(MergeError, match=message):
            merge_results([standard, str(path)])
    with pytest.raises(MergeError, match="share a name"):
        merge_results([standard, standard])


def test_the_cli_writes_a_file_the_report_reads(tmp_path, two_runs, capsys):
    standard, adaptive = two_runs
    out = tmp_path / "merged" / "results.json"
    out.parent.mkdir()
    assert main(["merge", standard, adaptive, "--out", str(out)]) == 0
    assert "3 entries, 5 attack figures from 2 files; 1 figures shadowed" in capsys.readouterr().out
    merged = load_results(out)
    assert merged["command"] == f"safesignal merge {standard} {adaptive} --out {out}"
    html, _ = write_report(merged, out.parent)
    assert "gcg_adaptive" in html.read_text()
    assert main(["merge", standard, str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    assert "missing.json: file not found" in capsys.readouterr().err
    assert load_results(out)["models"] == merged["models"]  # a failed merge leaves the good file


def test_the_report_names_the_runs_and_what_each_kept(tmp_path, two_runs):
    standard, adaptive = two_runs
    merged = merge_results([standard, adaptive])
    merged["sources"][0]["provenance"] = {"git_commit": "abcdef0123456789"}
    _, md = write_report(merged, tmp_path)
    text = md.read_text()
    assert "## Runs merged into this file" in text
    # standard: cls direct + prefill_10, sft direct; adaptive: cls gcg_adaptive, cls_tail direct (its cls direct shadowed)
    assert "| standard | safesignal eval (standard) | 2026-12-01T00:00:00 | 10.0 s | abcdef0123 | 3 | 0 |" in text
    assert "| adaptive | safesignal eval (adaptive) | 2026-12-01T00:00:00 | 10.0 s | — | 2 | 1 |" in text


def test_fine_tuned_checkpoints_stay_out_of_the_asr_tables(tmp_path, two_runs):
    standard, _ = two_runs
    curves = {"cls": {"service": {"objective": "cls", "data": "harmful", "points": [
        {"steps": 0, "entry": "cls", "direct": {"asr_leak": 0.5, "ci95": [0, 1], "n": 2}},
        {"steps": 2, "entry": "cls@service2", "direct": {"asr_leak": 0.0, "ci95": [0, 1], "n": 2}}]}}}
    finetune = results_file(tmp_path / "finetune.json",
                            {"cls": entry({"direct": attack(0.5)}),
                             "cls@service2": entry({"direct": attack(0.0)}, checkpoint="run/cls/service/step_2"),
                             "cls@service2:weights_only": entry({"direct": attack(1.0)}, decoding="plain",
                                                                checkpoint="run/cls/service/step_2")
                             | {"policy": "weights_only", "model": "cls@service2"}},
                            {"direct": POOL_A}, finetune={"curves": curves, "budget": {"steps": [2]}})
    _, md = write_report(merge_results([standard, finetune]), tmp_path)
    text = md.read_text()
    main = text[text.index("## Attack success"):text.index("\n## ", text.index("## Attack success") + 5)]
    assert "cls · strategic decoding" in main and "cls@service2" not in main
    assert "## Ablations" not in text  # the only ablation is a fine-tuned checkpoint's
    assert "## Fine-tuning attacks" in text and "cls@service2" in text
