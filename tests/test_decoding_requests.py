"""Per-row requests (seeds, policies, budgets, stop strings), input limits, dtype, cache growth."""

from __future__ import annotations

import pytest
import torch
from conftest import make_safety_model
from decoding_scripts import PREFIX, PROMPTS, force_head, peaked, script_head

from safesignal.decoding import Request, Sampling, StrategicDecoder
from safesignal.decoding import slots as slots_module
from safesignal.decoding.policy import SafetyPolicy

SAMPLED = dict(max_new_tokens=10, do_sample=True, temperature=1.3, top_p=0.95, ignore_eos=True)


@pytest.fixture(scope="module")
def benign():
    return force_head(make_safety_model("llama", "sdpa"), -30.0)


def test_duplicate_prompts_in_a_sampled_batch_sample_independently(benign):
    batch = benign.generate_batch([PROMPTS[0]] * 3, seed=11, **SAMPLED)
    assert len({tuple(r.token_ids) for r in batch}) == 3


def test_a_sampled_batch_equals_its_rows_run_alone_with_their_seeds(benign):
    batch = benign.generate_batch(PROMPTS, seed=11, **SAMPLED)  # row i gets seed 11 + i
    for i, (prompt, together) in enumerate(zip(PROMPTS, batch)):
        assert benign.generate(prompt, seed=11 + i, **SAMPLED).token_ids == together.token_ids
    listed = benign.generate_batch([PROMPTS[0], PROMPTS[1], PROMPTS[0]], seed=[5, 9, 5], **SAMPLED)
    assert listed[0].token_ids == listed[2].token_ids == benign.generate(PROMPTS[0], seed=5, **SAMPLED).token_ids
    with pytest.raises(ValueError, match="seed: need one entry per conversation"):
        benign.generate_batch(PROMPTS, seed=[1, 2], **SAMPLED)


def test_one_batch_serves_requests_with_different_settings():
    sm = peaked(make_safety_model("llama", "sdpa"))
    script_head(sm, [], default=-10.0)
    user = [[{"role": "user", "content": p}] for p in PROMPTS]
    malicious_threshold = SafetyPolicy(threshold=1e-9)  # every verdict reads as malicious: refuse at once
    requests = [
        Request(user[0], max_new_tokens=4, ignore_eos=True),
        Request(user[1], policy=malicious_threshold, max_new_tokens=6),
        Request(user[2], sampling=Sampling(do_sample=True, temperature=1.5, seed=3), max_new_tokens=9,
                prefill="Paris", ignore_eos=True),
    ]
    together = sm.generate_requests(requests)
    assert len(together[0].token_ids) == 4 and not together[0].intervened
    assert together[1].intervened and together[1].text.startswith(PREFIX)
    assert together[2].text.startswith("Paris") and not together[2].intervened
    for request, result in zip(requests, together):
        alone = sm.generate_requests([request])[0]
        assert alone.token_ids == result.token_ids and alone.finish_reason == result.finish_reason
    # per-row policies through generate_batch too
    mixed = sm.generate_batch(PROMPTS[:2], policy=[SafetyPolicy(), malicious_threshold], max_new_tokens=4)
    assert [r.intervened for r in mixed] == [False, True]


def test_a_prompt_over_max_prompt_tokens_is_rejected_naming_the_limit(benign):
    long_prompt = "bread " * 200
    with pytest.raises(ValueError, match=r"conversation 1: prompt \(with prefill\) is \d+ tokens, over the "
                                         r"policy's max_prompt_tokens=64"):
        benign.generate_batch([PROMPTS[0], long_prompt], policy=SafetyPolicy(max_prompt_tokens=64), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_prompt_tokens=64"):  # a prefill counts
        benign.generate(PROMPTS[0], prefill=long_prompt, policy=SafetyPolicy(max_prompt_tokens=64), max_new_tokens=2)
    assert benign.generate(PROMPTS[0], policy=SafetyPolicy(max_prompt_tokens=64), max_new_tokens=2).token_ids


def test_the_sliding_window_guard_counts_the_prefill_and_the_refusal_budget():
    sm = make_safety_model("mistral", "sdpa")
    prompt_tokens = len(sm.formatter.encode([{"role": "user", "content": PROMPTS[0]}]).input_ids)
    # what the old guard allowed: prompt + 2 [CLS] + two slots per step + 64
    sm.base.config.sliding_window = prompt_tokens + 2 + 2 * 8 + 64 + 1
    long_prefill = "Sure, here is how " * 12
    with pytest.raises(ValueError, match="sliding_window"):
        sm.generate(PROMPTS[0], prefill=long_prefill, max_new_tokens=8)
    with pytest.raises(ValueError, match="sliding_window"):
        sm.generate(PROMPTS[0], policy=SafetyPolicy(refusal_max_new_tokens=60), max_new_tokens=8)
    sm.base.config.sliding_window = 24
    with pytest.raises(ValueError, match="sliding_window 24"):
        sm.generate(PROMPTS[0], max_new_tokens=8)
    sm.base.config.sliding_window = 4096
    assert sm.generate(PROMPTS[0], prefill=long_prefill, max_new_tokens=8).text.startswith(long_prefill.strip())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("how", ["weights", "autocast"])
def test_a_bf16_decode_works_and_agrees_with_fp32(how, attn, arch):
    sm = peaked(make_safety_model(arch, attn))
    policy = SafetyPolicy(schedule="each", strategic_decoding=False)  # checks every step, never injects
    reference = sm.generate(PROMPTS[0], policy=policy, max_new_tokens=6, ignore_eos=True)
    if how == "weights":
        sm = sm.to(torch.bfloat16)
        r = sm.generate(PROMPTS[0], policy=policy, max_new_tokens=6, ignore_eos=True)
    else:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            r = sm.generate(PROMPTS[0], policy=policy, max_new_tokens=6, ignore_eos=True)
    assert len(r.token_ids) == 6 and r.error is None
    assert r.token_ids[:2] == reference.token_ids[:2]  # peaked logits: bf16 agrees on the first tokens
    for ours, theirs in zip(r.events[:2], reference.events[:2]):
        assert ours.probability == pytest.approx(theirs.probability, abs=0.02)


def test_cache_columns_dead_in_every_row_are_dropped(monkeypatch):
    sm = peaked(make_safety_model("llama", "sdpa"))
    policy = SafetyPolicy(schedule="each", tau=100)  # a [CLS] column every step, each one superseded
    requests = [Request([{"role": "user", "content": p}], policy=policy, max_new_tokens=60, ignore_eos=True)
                for p in PROMPTS[:2]]

    def run():
        keys, original = [], sm.hidden_states

        def spy(ids, mask, positions, cache=None, inputs_embeds=None):
            keys.append(mask.shape[-1])
            return original(ids, mask, positions, cache=cache, inputs_embeds=inputs_embeds)

        sm.hidden_states = spy
        results = StrategicDecoder(sm).generate(requests)
        del sm.hidden_states
        return results, keys

    compacted, keys = run()
    prompt = keys[0]  # the prefill pass: its keys are its own columns
    assert max(keys) <= prompt + 60 + slots_module.COMPACT_AT + 2  # one live token per step, plus slack
    monkeypatch.setattr(slots_module, "COMPACT_AT", 10**9)
    grown, grown_keys = run()
    assert max(grown_keys) >= prompt + 2 * 59  # without compaction: token + [CLS] per step
    for a, b in zip(compacted, grown):  # dropping dead columns changes nothing
        assert a.token_ids == b.token_ids
        assert [e.probability for e in a.events] == pytest.approx([e.probability for e in b.events], abs=1e-5)


def test_rows_joining_a_running_batch_decode_as_they_would_alone():
    sm = peaked(make_safety_model("qwen2", "sdpa"))
    with torch.no_grad():  # the real head, sharpened: verdicts that move with the text
        sm.head.weight.mul_(60.0)

    def request(i, policy, prefill=None, **kwargs):
        return Request([{"role": "user", "content": PROMPTS[i]}], prefill=prefill, policy=policy, **kwargs)

    each = dict(schedule="each")
    plan = [
        request(0, SafetyPolicy(**each), max_new_tokens=12),  # refused at once
        request(1, SafetyPolicy(**each), max_new_tokens=4),
        request(2, SafetyPolicy(threshold=0.85, tau=1, **each), prefill="Paris is", max_new_tokens=8),
        request(2, SafetyPolicy(threshold=0.55, strategic_decoding=False, **each), prefill="Paris is",
                max_new_tokens=6, ignore_eos=True),
    ]
    decoder = StrategicDecoder(sm)
    decoder.start(plan[:2])
    for _ in range(3):
        decoder.step()
    decoder.join(plan[2:3])  # joins mid-way, with a prefill of its own
    while len(decoder.active) > 1:
        decoder.step()
    decoder.join(plan[3:])  # joins while one row is still running
    while decoder.active:
        decoder.step()
    results = decoder.results()
    assert decoder.model_calls == decoder.steps + 3  # one prefill pass per start / join
    assert [r.intervened for r in results] == [True, True, True, False]
    assert results[2].tokens_before_intervention > 0  # rolled back mid-generation
    assert {e.label for e in results[3].events} == {"benign", "malicious"}
    for request_, together in zip(plan, results):
        alone = StrategicDecoder(sm).generate([request_])[0]
        assert together.token_ids == alone.token_ids and together.finish_reason == alone.finish_reason
        assert [(e.step, e.label, e.window) for e in together.events] == [(e.step, e.label, e.window) for e in alone.events]
        assert [e.probability for e in together.events] == pytest.approx([e.probability for e in alone.events], abs=1e-5)


def test_rows_report_their_own_output_and_finished_rows_can_be_forgotten(benign):
    """A server's view: per-row deltas add up to the text, ids stay valid after others are forgotten."""
    requests = [Request([{"role": "user", "content": p}], max_new_tokens=n, ignore_eos=True)
                for p, n in zip(PROMPTS, (3, 9))]
    decoder = StrategicDecoder(benign)
    ids = decoder.start(requests[:1])
    texts = {ids[0]: decoder.output(ids[0]).delta}
    decoder.step()
    (joined,) = decoder.join(requests[1:])
    assert (ids, joined) == ([0], 1)
    texts[joined] = decoder.output(joined).delta
    finished = {}
    while decoder.active:
        decoder.step()
        for row_id in list(texts):
            if row_id in finished:
                continue
            out = decoder.output(row_id)
            texts[row_id] += out.delta
            if out.done:
                finished[row_id] = out.result
                decoder.forget(row_id)
        if 0 in finished and decoder.active:
            with pytest.raises(KeyError, match="row 0"):
                decoder.output(0)
            with pytest.raises(ValueError, match="still decoding"):
                decoder.forget(joined)
    assert decoder.rows == []  # nothing kept once every row is forgotten
    for row_id, request in zip((0, joined), requests):
        alone = StrategicDecoder(benign).generate([request])[0]
        assert texts[row_id] == finished[row_id].text == alone.text
        assert finished[row_id].token_ids == alone.token_ids
