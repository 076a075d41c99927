"""Forced decoding: the decoder emits given response tokens with its real checks riding along
(the streaming-detection benchmark), and `cancel` ends a row early."""

from __future__ import annotations

import pytest
from conftest import make_safety_model
from decoding_scripts import PREFIX, PROMPTS, force_head, peaked, text_ids

from safesignal.decoding import Request, SafetyPolicy, StrategicDecoder

QUIET = dict(strategic_decoding=False)  # injection off: checks are recorded, nothing is replaced


def user(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def same_events(ours, theirs):
    assert [(e.step, e.label, e.window, e.rule, e.outcome) for e in ours] == \
        [(e.step, e.label, e.window, e.rule, e.outcome) for e in theirs]
    for a, b in zip(ours, theirs):
        assert a.probability == pytest.approx(b.probability, abs=1e-5)


@pytest.fixture(scope="module")
def sm():
    return make_safety_model("llama", "sdpa")  # its seeded random head gives varied probabilities


@pytest.mark.parametrize("schedule", ["each", "annealing", "periodic"])
def test_forcing_a_greedy_runs_tokens_replays_its_checks(sm, schedule):
    policy = SafetyPolicy(schedule=schedule, period=3, threshold=0.999, **QUIET)  # benign: the schedule alone
    greedy = sm.generate_requests([Request(user(PROMPTS[0]), policy=policy, max_new_tokens=14, ignore_eos=True)])[0]
    forced = sm.generate_requests([Request(user(PROMPTS[0]), policy=policy, max_new_tokens=256,
                                           forced_response_ids=greedy.token_ids)])[0]
    assert forced.token_ids == greedy.token_ids and forced.finish_reason == "forced_end"
    same_events(forced.events, greedy.events)
    expected = {"each": range(15), "periodic": range(0, 15, 3), "annealing": [*range(9), 10, 14]}[schedule]
    assert [e.step for e in forced.events] == list(expected)


def test_a_batch_of_forced_requests_equals_each_run_alone(sm):
    policy = SafetyPolicy(schedule="each", **QUIET)
    requests = [
        Request(user(PROMPTS[0]), policy=policy, forced_response_ids=text_ids(sm, "Mix flour, water and salt.")),
        Request(user(PROMPTS[1]), policy=SafetyPolicy(schedule="periodic", period=2, **QUIET),
                forced_response_ids=text_ids(sm, "Sure, here is a plan: 1. Gather the materials.")),
        Request(user(PROMPTS[2]), policy=policy, prefill="The capital", forced_response_ids=text_ids(sm, " is Paris.")),
    ]
    together = sm.generate_requests(requests)
    for request, result in zip(requests, together):
        alone = sm.generate_requests([request])[0]
        assert alone.token_ids == result.token_ids
        same_events(result.events, alone.events)
    assert together[2].token_ids == text_ids(sm, "The capital") + text_ids(sm, " is Paris.")


def test_forced_ids_are_never_replaced_with_injection_off_even_when_every_verdict_is_malicious():
    malicious = force_head(make_safety_model("llama", "sdpa"), 30.0)
    forced = text_ids(malicious, "Sure, here is a plan: 1. Gather the materials.") + [malicious.tokenizer.eos_token_id]
    forced += text_ids(malicious, " 2. Follow the steps.")  # EOS inside a forced answer is just a token
    r = malicious.generate_requests([Request(user(PROMPTS[1]), policy=SafetyPolicy(schedule="each", **QUIET),
                                             forced_response_ids=forced)])[0]
    assert r.token_ids == forced and not r.intervened and r.finish_reason == "forced_end"
    assert r.events[0].outcome == "confirmed" and all(e.label == "malicious" for e in r.events)
    capped = malicious.generate_requests([Request(user(PROMPTS[1]), policy=SafetyPolicy(**QUIET), max_new_tokens=3,
                                                  forced_response_ids=forced)])[0]
    assert capped.token_ids == forced[:3] and capped.finish_reason == "length"
    with pytest.raises(ValueError, match="forced_response_ids"):
        Request(user(PROMPTS[1]), forced_response_ids=[])


def test_with_injection_on_a_confirmation_retracts_the_forced_tail_and_the_model_writes_on():
    sm = peaked(force_head(make_safety_model("llama", "sdpa"), 30.0))
    forced = text_ids(sm, "Sure, here is a plan: 1. Gather the materials.")
    r = sm.generate_requests([Request(user(PROMPTS[1]), max_new_tokens=4, forced_response_ids=forced)])[0]
    assert r.intervened and r.text.startswith(PREFIX) and r.finish_reason == "refusal_length"


def test_a_cancelled_row_leaves_and_the_others_decode_as_alone(sm):
    policy = SafetyPolicy(schedule="each", **QUIET)
    requests = [Request(user(p), policy=policy, forced_response_ids=text_ids(sm, "Mix flour, water, salt and yeast."))
                for p in PROMPTS[:2]]
    decoder = StrategicDecoder(sm)
    decoder.start(requests)
    decoder.step()
    decoder.step()
    decoder.cancel(0)
    while decoder.active:
        decoder.step()
    cancelled, kept = decoder.results()
    assert cancelled.finish_reason == "cancelled" and len(cancelled.token_ids) == 2
    assert [e.step for e in cancelled.events] == [0, 1, 2]
    alone = sm.generate_requests([requests[1]])[0]
    assert kept.token_ids == alone.token_ids
    same_events(kept.events, alone.events)
