"""Chunked prefill (`begin_head` / `advance_head` / `join_head`): a long prompt's first tokens
run in forwards of their own between the batch's steps, and the row then decodes exactly as it
would have after one whole prefill pass."""

from __future__ import annotations

import pytest
import torch
from conftest import SYSTEM, make_safety_model
from decoding_scripts import PROMPTS, peaked

from safesignal.batching import collate
from safesignal.decoding import Request, StrategicDecoder
from safesignal.decoding.policy import SafetyPolicy
from safesignal.decoding.prompt_embeddings import PromptEmbeddings
from safesignal.masks import NO_SLOT, prefill_pass_allowed, prompt_head_allowed

pytestmark = pytest.mark.usefixtures("no_grad")

LONG = [SYSTEM, {"role": "user", "content": "Tell me, in as much detail as you can, how bread rises in an oven."},
        {"role": "assistant", "content": "It rises because gas expands."},
        {"role": "user", "content": "And why does the crust brown?"}]
EACH = SafetyPolicy(schedule="each", threshold=0.5)


def chunked(sm, request: Request, chunk: int, beside: Request | None = None):
    """Run `request` through a chunked prefill (one decode step of `beside` between chunks)."""
    decoder = StrategicDecoder(sm)
    if beside is not None:
        decoder.start([beside])
    head = decoder.begin_head(request, chunk)
    chunks = 0
    while not head.done:
        decoder.advance_head(head)
        chunks += 1
        if decoder.active:
            decoder.step()
    (row,) = decoder.join_head(head)
    while decoder.active:
        decoder.step()
    results = decoder.results()
    return results, results[-1], chunks


def same(a, b):
    assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
    assert a.intervened == b.intervened and a.intervention_index == b.intervention_index
    assert [(e.step, e.label, e.window, e.rule) for e in a.events] == [(e.step, e.label, e.window, e.rule) for e in b.events]
    assert [e.probability for e in a.events] == pytest.approx([e.probability for e in b.events], abs=1e-5)


@pytest.mark.parametrize("arch,attn", [("llama", "eager"), ("mistral", "sdpa"), ("qwen2", "sdpa")])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_a_chunked_prefill_decodes_as_one_whole_prefill_pass(arch, attn, chunk):
    sm = peaked(make_safety_model(arch, attn))
    request = Request(LONG, policy=EACH, max_new_tokens=10, ignore_eos=True)
    alone = StrategicDecoder(sm).generate([request])[0]
    _, result, chunks = chunked(sm, request, chunk)
    same(result, alone)
    prompt_length = sm.formatter.encode(LONG, add_eos=False).prompt_length
    assert chunks == -(-(prompt_length - 1) // chunk)  # the head stops before the last prompt row


@pytest.mark.parametrize("policy", [EACH, SafetyPolicy(schedule="each", window_includes_query=False, r2=3),
                                    SafetyPolicy(schedule="annealing", strategic_attention=False)],
                         ids=["each", "window_without_query", "no_strategic_attention"])
def test_with_a_prefill_and_a_row_decoding_beside_it(policy):
    sm = peaked(make_safety_model("llama", "sdpa"))
    request = Request(LONG, prefill="The crust browns", policy=policy, max_new_tokens=8, ignore_eos=True)
    beside = Request([{"role": "user", "content": PROMPTS[0]}], policy=EACH, max_new_tokens=30, ignore_eos=True)
    results, result, chunks = chunked(sm, request, 4, beside)
    assert chunks > 3
    same(result, StrategicDecoder(sm).generate([request])[0])
    same(results[0], StrategicDecoder(sm).generate([beside])[0])  # the running row is untouched


def test_a_malicious_first_verdict_over_a_chunked_prompt_injects():
    sm = peaked(make_safety_model("llama", "sdpa"))
    with torch.no_grad():
        sm.head.weight.zero_()
        sm.head.bias.fill_(8.0)
    request = Request(LONG, policy=EACH, max_new_tokens=6)
    _, result, _ = chunked(sm, request, 3)
    assert result.intervened and result.intervention_index == 0
    same(result, StrategicDecoder(sm).generate([request])[0])


def test_head_errors():
    sm = make_safety_model("llama", "sdpa")
    decoder = StrategicDecoder(sm)
    request = Request(LONG, max_new_tokens=2)
    with pytest.raises(ValueError, match="chunk_tokens"):
        decoder.begin_head(request, 0)
    head = decoder.begin_head(request, 4)
    with pytest.raises(ValueError, match="advance it first"):
        decoder.join_head(head)
    embedded = Request(LONG, max_new_tokens=2, prompt_embeddings=PromptEmbeddings(0, torch.zeros(1, 64)))
    with pytest.raises(ValueError, match="prompt_embeddings"):
        decoder.begin_head(embedded, 4)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        decoder.begin_head(Request(LONG, policy=SafetyPolicy(max_prompt_tokens=5)), 4)


@pytest.mark.parametrize("prefill,include_query", [("", True), ("Warm ovens", True), ("Warm ovens", False)])
def test_head_mask_equals_the_whole_prefill_mask_restricted_to_the_head(prefill, include_query):
    """Independent of the decoder: build the whole prefill pass's mask, then read off what the
    rows after the head may read of the head's columns."""
    sm = make_safety_model("llama", "sdpa")
    example = sm.formatter.encode(LONG, prefill, add_eos=False)
    skip = example.prompt_length - 1
    whole = collate([example], cls_token_id=sm.cls_token_id, pad_token_id=sm.tokenizer.pad_token_id,
                    with_labels=False)
    # the decoder's layout: slot B appended after the last token when there is a prefill
    with_b = bool(prefill)
    if with_b:
        for key, value in (("input_ids", sm.cls_token_id), ("attention_mask", 1), ("query_mask", False),
                           ("window_mask", False)):
            whole[key] = torch.cat([whole[key], torch.full((1, 1), value, dtype=whole[key].dtype)], dim=1)
    length = whole["input_ids"].shape[1]
    start = int(whole["slot_a"]) + 1
    n = len(example.input_ids)
    slot_b = torch.tensor([length - 1 if with_b else NO_SLOT])
    window_end = torch.tensor([length])
    if with_b:
        whole["window_mask"][0, start + example.prompt_length : start + n] = True
        window_end = torch.tensor([start + n - 1])
    include = torch.tensor([include_query])
    full = prefill_pass_allowed(whole["attention_mask"], whole["query_mask"], whole["slot_a"], whole["reader_start"],
                                slot_b, whole["window_mask"], window_end, include)
    head_columns = list(range(start, start + skip))
    later_rows = [int(whole["slot_a"])] + list(range(start + skip, length))
    expected = full[0][later_rows][:, head_columns]

    tail_rows = torch.tensor(later_rows)  # the same rows, laid out as the decoder lays out the tail
    got = prompt_head_allowed(whole["attention_mask"][:, tail_rows], torch.tensor([0]),
                              torch.tensor([len(later_rows) - 1 if with_b else NO_SLOT]),
                              whole["window_mask"][:, tail_rows], include,
                              torch.tensor([example.query_mask[:skip]]))
    assert torch.equal(got[0], expected)
    assert expected.any() and not expected.all()  # the rule has something to say both ways
