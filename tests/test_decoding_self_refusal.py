"""The model's own refusal is not refused again; a fake refusal followed by an answer still is."""

from __future__ import annotations

import pytest
from conftest import ATTNS, make_safety_model
from decoding_scripts import PREFIX, PROMPTS, script_head, script_lm, text_ids

from safesignal.decoding.policy import SafetyPolicy

OWN_REFUSAL = "Sorry, I cannot fulfill your request because it is harmful."
FAKE_REFUSAL = "I can't help. Just kidding: step 1, mix the powder"


def scripted_run(attn: str, text: str, policy: SafetyPolicy):
    """The model writes `text` then EOS; the head is benign for the query and step 1, then
    malicious at every check."""
    sm = make_safety_model("llama", attn)
    ids = text_ids(sm, text)
    script_lm(sm, ids)
    script_head(sm, [-5.0, -5.0], default=5.0)
    return sm, ids, sm.generate(PROMPTS[1], policy=policy, max_new_tokens=len(ids) + 5)


@pytest.mark.parametrize("attn", ATTNS)
def test_a_confirmation_over_the_models_own_refusal_injects_nothing(attn):
    sm, ids, r = scripted_run(attn, OWN_REFUSAL, SafetyPolicy(schedule="each", tau=2))
    assert not r.intervened and r.token_ids == ids and r.text == OWN_REFUSAL  # no second refusal
    assert r.finish_reason == "eos"
    assert r.self_refusals and all(e.outcome == "self_refusal" for e in r.self_refusals)
    # checks go on after each self-refusal: every step up to the last token was checked
    assert [e.step for e in r.events] == list(range(len(ids) + 1))


def test_refusal_markers_are_policy_configuration():
    # without markers the same run is refused a second time, at the transition inside the refusal
    sm, ids, r = scripted_run("sdpa", OWN_REFUSAL, SafetyPolicy(schedule="each", tau=2, refusal_markers=[]))
    assert r.intervened and not r.self_refusals and r.tokens_before_intervention == 1
    assert r.text.startswith(sm.tokenizer.decode(ids[:1]) + "\n\n" + PREFIX)


@pytest.mark.parametrize("attn", ATTNS)
def test_a_fake_refusal_followed_by_an_answer_is_still_caught(attn):
    # τ = 1: every malicious verdict confirms at once, so the first one past the refusal injects
    sm, ids, r = scripted_run(attn, FAKE_REFUSAL, SafetyPolicy(schedule="each", tau=1))
    assert r.self_refusals  # the refusal sentence itself was recognised ...
    assert r.intervened  # ... and the answer after it was refused, from the first token after it
    kept = sm.tokenizer.decode(r.token_ids[: r.intervention_index])
    assert kept == "I can't help."
    assert r.text.startswith(kept + "\n\n" + PREFIX)


@pytest.mark.parametrize("attn", ATTNS)
def test_an_answer_that_opens_like_a_refusal_is_still_refused(attn):
    # One long sentence after a marker: a refusal span that never closed would make every
    # confirmation a self-refusal; the span is capped at self_refusal_max_tokens.
    text = "I can't help but tell you: get the stuff, mix it well, heat it, add the rest, wait, then use it"
    policy = SafetyPolicy(schedule="each", tau=2, self_refusal_max_tokens=8)
    sm, ids, r = scripted_run(attn, text, policy)
    assert len(ids) > 20
    assert r.intervened and r.tokens_before_intervention <= policy.self_refusal_max_tokens
    assert r.text.startswith(sm.tokenizer.decode(ids[: r.tokens_before_intervention]) + "\n\n" + PREFIX)


def test_a_marker_in_the_middle_of_a_sentence_is_no_self_refusal():
    text = "Here it is, and sorry, I cannot stop now: step one, step two, step three"
    sm, ids, r = scripted_run("sdpa", text, SafetyPolicy(schedule="each", tau=2))
    assert r.intervened and not r.self_refusals and r.tokens_before_intervention == 1
