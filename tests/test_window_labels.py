"""Per-window labels for slot B (DESIGN.md §SFT mask): a record's `response_labels` spans set
the label of each slot-B window, so a window over a refusal reads 0 and one over harmful text 1
whatever the query's label; without spans every window keeps the query label (the v1 rule)."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

from safesignal.batching import WindowSampler, collate, live_slot_b, window_label
from safesignal.data.dataset import encode_records
from safesignal.data.schema import DataError, parse_record, read_jsonl
from safesignal.formatting import EncodedExample

from conftest import make_safety_model

PROMPT = "Explain how to pick a lock."
HARMFUL = "Step one: insert the tension wrench and rake the pins. "
REFUSAL = "Sorry, I cannot fulfill your request because it could help a burglary."


def _record(**overrides) -> dict:
    record = {"prompt": PROMPT, "response": HARMFUL + REFUSAL, "label": 1, "source": "test",
              "response_labels": [[0, len(HARMFUL), 1], [len(HARMFUL), len(HARMFUL + REFUSAL), 0]]}
    record.update(overrides)
    return record


# ---------------------------------------------------------------------- schema
def test_response_labels_are_parsed_and_shifted_past_a_prefill():
    record = parse_record(_record(), "f.jsonl:1")
    assert record.response_labels == [(0, len(HARMFUL), 1), (len(HARMFUL), len(HARMFUL + REFUSAL), 0)]
    assert record.training_spans() == record.response_labels
    prefilled = parse_record(_record(prefill="Sure: "), "f.jsonl:2")
    text, _ = prefilled.training_text()
    (a0, a1, y0), (b0, b1, y1) = prefilled.training_spans()
    assert text[a0:a1] == HARMFUL and y0 == 1 and text[b0:b1] == REFUSAL and y1 == 0
    assert parse_record(_record(response_labels=None), "f.jsonl:3").training_spans() is None


@pytest.mark.parametrize("spans, field, words", [
    ("all", "response_labels", "expected a list"),
    ([[0, 5]], "response_labels[0]", "[start, end, label]"),
    ([[0, 5, 2]], "response_labels[0]", "label must be 0"),
    ([[0, 5, True]], "response_labels[0]", "integer entries"),
    ([[5, 5, 1]], "response_labels[0]", "non-empty span"),
    ([[0, 10_000, 1]], "response_labels[0]", "length"),
    ([[0, 10, 1], [5, 20, 0]], "response_labels[1]", "must not overlap"),
])
def test_bad_response_labels_name_the_line_and_the_span(tmp_path, spans, field, words):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_record(response_labels=[[0, 3, 0]])) + "\n" + json.dumps(_record(response_labels=spans)) + "\n")
    with pytest.raises(DataError) as err:
        read_jsonl(path)
    message = str(err.value)
    assert f"bad.jsonl:2: {field}:" in message and words in message
    assert "bad.jsonl:1" not in message


# ---------------------------------------------------------------------- encoding
@pytest.fixture(scope="module")
def sm():
    return make_safety_model("llama", "eager")


def test_each_response_token_takes_the_label_of_the_span_it_lies_in(sm):
    record = parse_record(_record(), "f.jsonl:1")
    (example,) = encode_records([record], sm.formatter)
    assert example.token_labels is not None and len(example.token_labels) == len(example.input_ids)
    assert set(example.token_labels[:example.prompt_length]) == {-1}
    # Independently: decode the response tokens and see where their text falls.
    response_ids = example.input_ids[example.prompt_length:]
    decoded, labels = "", []
    for token, label in zip(response_ids, example.token_labels[example.prompt_length:]):
        piece = sm.tokenizer.decode([token])
        start = len(decoded)
        decoded += piece
        if start >= len(HARMFUL + REFUSAL):
            assert label == -1  # the EOS after the response lies in no span
        elif start + len(piece) <= len(HARMFUL):
            assert label == 1, piece
        elif start >= len(HARMFUL):
            assert label == 0, piece
        labels.append(label)
    assert labels.count(1) > 3 and labels.count(0) > 3


def test_records_without_response_labels_encode_without_token_labels(sm):
    (example,) = encode_records([parse_record(_record(response_labels=None), "f:1")], sm.formatter)
    assert example.token_labels is None


# ---------------------------------------------------------------------- the window rule
def _example(token_labels, label=1) -> EncodedExample:
    n = len(token_labels)
    return EncodedExample(list(range(10, 10 + n)), [True] * n, 2, 2, label, token_labels=token_labels)


@pytest.mark.parametrize("labels, window, query, expected", [
    ([-1, -1, 0, 0, 0, 0], (2, 5), 1, 0),    # all refusal: 0 although the query is malicious
    ([-1, -1, 1, 1, 0, 0], (3, 4), 0, 1),    # one harmful token: 1 although the query is benign
    ([-1, -1, 0, 0, -1, -1], (3, 4), 1, 1),  # an unlabelled token carries the query label
    ([-1, -1, 0, 0, -1, -1], (3, 4), 0, 0),
    ([-1, -1, 0, 0, 0, 0], None, 1, 1),      # a dead slot keeps the query label (it gets no loss)
])
def test_window_label(labels, window, query, expected):
    assert window_label(_example(labels, query), window) == expected


def test_without_token_labels_the_window_keeps_the_query_label():
    assert window_label(EncodedExample([1, 2, 3, 4], [True] * 4, 1, 1, 1), (1, 2)) == 1
    assert window_label(EncodedExample([1, 2, 3, 4], [True] * 4, 1, 1, 0), (1, 2)) == 0


def test_collated_slot_b_labels_follow_the_sampled_windows(sm):
    records = [parse_record(_record(), f"f:{i}") for i in range(6)]
    records += [parse_record(_record(response_labels=None), "f:6")]
    examples = encode_records(records, sm.formatter)
    batch = collate(examples, cls_token_id=sm.cls_token_id, pad_token_id=sm.tokenizer.pad_token_id,
                    window_sampler=WindowSampler(max_length=6, dead_fraction=0.0),
                    rng=[random.Random(k) for k in range(len(examples))])
    assert torch.equal(batch["cls_labels"], torch.ones(len(examples)))
    seen = set()
    for row, example in enumerate(examples):
        start = int(batch["slot_a"][row]) + 1
        window = batch["window_mask"][row].nonzero().flatten().tolist()
        assert window, "dead_fraction=0 gives every row a window"
        # Expected from the window's text: harmful if any window token's text lies in HARMFUL.
        offsets = [i - start for i in window]
        token_labels = example.token_labels or [-1] * len(example.input_ids)
        expected = max(1 if token_labels[i] == -1 else token_labels[i] for i in offsets)
        assert batch["cls_labels_b"][row].item() == expected
        seen.add(expected)
    assert batch["cls_labels_b"][-1].item() == 1  # no spans: the query label
    assert seen == {0, 1}, "the seeded windows cover both a refusal-only and a harmful window"


def test_the_joint_loss_supervises_slot_b_with_its_window_label(sm):
    examples = encode_records([parse_record(_record(), f"f:{i}") for i in range(4)], sm.formatter)
    batch = collate(examples, cls_token_id=sm.cls_token_id, pad_token_id=sm.tokenizer.pad_token_id,
                    window_sampler=WindowSampler(max_length=6, dead_fraction=0.0),
                    rng=[random.Random(k) for k in range(4)])
    batch["cls_labels_b"] = torch.tensor([0.0, 1.0, 0.0, 1.0])
    with torch.no_grad():
        out = sm(**batch, cls_loss_weight=1.0)
        hidden = sm.forward_batch(batch)
    rows = torch.arange(4)
    live = live_slot_b(batch)
    assert live.all()
    logits = torch.cat([sm.cls_logits(hidden[rows, batch["slot_a"]]), sm.cls_logits(hidden[rows, batch["slot_b"]])])
    targets = torch.cat([torch.ones(4), batch["cls_labels_b"]])
    expected = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="sum") / 8
    assert out.cls_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # and it is not the query-label loss
    query_only = F.binary_cross_entropy_with_logits(logits.float(), torch.ones(8), reduction="sum") / 8
    assert abs(query_only.item() - expected.item()) > 1e-4
