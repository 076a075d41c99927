"""JSONL schema validation, tokenisation spans and class balancing."""

import json

import pytest

from safesignal.data.dataset import EncodedDataset, balanced_indices, encode_records
from safesignal.data.encoded_store import write_store
from safesignal.data.schema import DataError, parse_record, read_jsonl
from safesignal.formatting import PromptFormatter
from safesignal.tiny import build_tiny_tokenizer


@pytest.fixture(scope="module")
def formatter():
    return PromptFormatter(build_tiny_tokenizer())


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = {"prompt": "How do I bake bread?", "response": "Mix flour and water.", "label": 0, "source": "toy"}


def test_both_formats_parse_to_the_same_record():
    a = parse_record(GOOD, "f:1")
    b = parse_record(
        {
            "messages": [
                {"role": "user", "content": GOOD["prompt"]},
                {"role": "assistant", "content": GOOD["response"]},
            ],
            "label": 0,
            "source": "toy",
        },
        "f:2",
    )
    assert (a.messages, a.response, a.label) == (b.messages, b.response, b.label)


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"label": 2}, "label"),
        ({"label": True}, "label"),
        ({"source": ""}, "source"),
        ({"response": ""}, "response"),
        ({"supervise_from": 999}, "supervise_from"),
        ({"supervise_from": "3"}, "supervise_from"),
        ({"prefill": 5}, "prefill"),
        ({"colour": "red"}, "colour"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_bad_field_is_named_with_file_and_line(tmp_path, patch, field):
    bad = dict(GOOD, **patch)
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD), json.dumps(bad)])
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    assert f"{path}:2: {field}:" in str(err.value)


def test_every_bad_record_is_reported_not_dropped(tmp_path):
    lines = [json.dumps(GOOD), "{not json", json.dumps(dict(GOOD, label=7)), json.dumps({"label": 0, "source": "x"})]
    path = write_lines(tmp_path / "d.jsonl", lines)
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    assert [p.split(": ")[0] for p in err.value.problems] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert "invalid JSON" in err.value.problems[0]


def test_bad_role_in_messages_is_reported(tmp_path):
    rec = {"messages": [{"role": "robot", "content": "hi"}], "label": 0, "source": "x", "response": "ok"}
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(rec)])
    with pytest.raises(DataError, match=r"d.jsonl:1: messages\[0\]\.role: \'robot\'"):
        read_jsonl(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_query_span_covers_exactly_the_callers_text(formatter):
    """Every message the caller supplied is query, a system message too (DESIGN.md §SFT mask)."""
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How do I bake bread?"}]
    ex = formatter.encode(messages, "Mix flour.")
    tok = formatter.tokenizer
    query_text = tok.decode([t for t, q in zip(ex.input_ids, ex.query_mask) if q])
    assert query_text == "Be brief.How do I bake bread?"
    # nothing after the prompt is query, and the response decodes back (plus EOS)
    assert not any(ex.query_mask[ex.prompt_length :])
    assert tok.decode(ex.input_ids[ex.prompt_length :]) == "Mix flour." + tok.eos_token


def test_supervise_from_skips_the_harmful_prefix(formatter):
    response = "Sure, here is how: step one.\n\nSorry, I cannot fulfill your request because it is harmful."
    cut = response.index("\n\nSorry")
    ex = formatter.encode([{"role": "user", "content": "do a bad thing"}], response, supervise_from=cut)
    tok = formatter.tokenizer
    assert ex.prompt_length < ex.supervised_from < len(ex.input_ids)
    supervised = tok.decode(ex.input_ids[ex.supervised_from :])
    assert supervised.startswith("\n\nSorry") or supervised.startswith("Sorry")
    assert "step one" not in supervised


def test_prefill_is_unsupervised_response_text(formatter, tmp_path):
    rec = dict(GOOD, prefill="Sure, ")
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(rec)])
    (ex,) = encode_records(read_jsonl(path), formatter)
    tok = formatter.tokenizer
    assert tok.decode(ex.input_ids[ex.prompt_length : ex.supervised_from]).startswith("Sure")
    assert tok.decode(ex.input_ids[ex.supervised_from :]).startswith("Mix")


def test_too_long_prompt_is_reported_with_location(tmp_path):
    short = PromptFormatter(build_tiny_tokenizer(), max_length=8)
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(dict(GOOD, prompt="word " * 40))])
    with pytest.raises(DataError, match=r"d.jsonl:1: messages: prompt is \d+ tokens"):
        encode_records(read_jsonl(path), short)


def test_balancing_oversamples_the_minority_to_the_majority_count():
    labels = [0] * 10 + [1] * 3
    idx = balanced_indices(labels, seed=0)
    picked = [labels[i] for i in idx]
    assert picked.count(0) == picked.count(1) == 10
    assert set(range(13)) <= set(idx)  # nothing dropped
    assert balanced_indices(labels, seed=0).tolist() == idx.tolist()  # deterministic


def test_encoded_dataset_balance_flag(formatter, tmp_path):
    recs = [parse_record(dict(GOOD, label=y), f"x:{i}") for i, y in enumerate([0, 0, 0, 1])]
    store = write_store(encode_records(recs, formatter), tmp_path / "store", len(formatter.tokenizer))
    assert EncodedDataset(store, balance=True).label_counts() == {0: 3, 1: 3}
    assert EncodedDataset(store, balance=False).label_counts() == {0: 3, 1: 1}


def test_yaml_defaults_and_home_paths(tmp_path, monkeypatch):
    from safesignal.config import read_yaml

    monkeypatch.setenv("SAFESIGNAL_HOME", str(tmp_path / "home"))
    (tmp_path / "base.yaml").write_text("learning_rate: 0.1\nseed: 3\noutput_dir: $SAFESIGNAL_HOME/runs/x\n")
    (tmp_path / "child.yaml").write_text("defaults: base.yaml\nseed: 4\n")
    data = read_yaml(tmp_path / "child.yaml")
    assert data == {"learning_rate": 0.1, "seed": 4, "output_dir": str(tmp_path / "home" / "runs" / "x")}
    (tmp_path / "loop.yaml").write_text("defaults: loop.yaml\n")
    with pytest.raises(ValueError, match="circular"):
        read_yaml(tmp_path / "loop.yaml")
