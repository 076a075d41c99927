"""Streaming never takes text back, and a failing check fails closed from the release frontier."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_safety_model
from decoding_scripts import PREFIX, PROMPTS, peaked, script_head, script_lm

from safesignal.decoding.policy import SafetyPolicy

FAILURES = ("nan", "raise")


@pytest.fixture(scope="module")
def model():
    return peaked(make_safety_model("llama", "sdpa"))


def streamed(sm, script, **kwargs):
    """(deltas, per-delta events, result) of one streamed run with a scripted head."""
    script_head(sm, script)
    deltas, events, result = [], [], None
    for delta in sm.stream(PROMPTS[0], **kwargs):
        deltas.append(delta.text)
        events.append(delta.events)
        result = delta.result if delta.done else result
    return deltas, events, result


def random_case(seed: int, vocabulary: int):
    """Random policy, prefill, budget, stop string, verdicts (some failing) and, for half the
    cases, a scripted LM that ends in EOS at a random step."""
    rng = random.Random(seed)
    policy = SafetyPolicy(schedule=rng.choice(["each", "annealing"]), tau=rng.randint(1, 3),
                          strategic_decoding=rng.random() < 0.8, strategic_attention=rng.random() < 0.7)
    script = []
    for _ in range(40):
        u = rng.random()
        script.append("nan" if u < 0.04 else "raise" if u < 0.08 else 5.0 if u < 0.4 else -5.0)
    kwargs = dict(policy=policy, max_new_tokens=rng.randint(3, 10), prefill=rng.choice([None, "Sure, here is"]),
                  stop=rng.choice([None, ["e"], ["on"]]))
    tokens = [rng.randrange(10, vocabulary) for _ in range(rng.randint(1, 8))] if rng.random() < 0.5 else None
    return script, tokens, kwargs


def test_stream_deltas_add_up_and_never_retract_under_random_verdicts_and_failures(model):
    failed_cases, reasons = 0, set()
    vocabulary = model.cls_token_id  # ordinary ids are below [CLS]
    for seed in range(24):
        script, tokens, kwargs = random_case(seed, vocabulary)
        if tokens is not None:
            script_lm(model, tokens)
        deltas, events, result = streamed(model, script, **kwargs)
        if tokens is not None:
            script_lm(model, tokens)
        script_head(model, script)
        alone = model.generate(PROMPTS[0], **kwargs)
        if tokens is not None:
            del model.lm_logits  # back to the model's own LM head
        where = f"seed {seed}: {kwargs}, tokens {tokens}"
        assert alone.token_ids == result.token_ids and alone.text == result.text, where
        assert "".join(deltas) == result.text, where
        reasons.add((result.finish_reason, result.intervened))
        for k in range(len(deltas)):  # at every point, the final text starts with what was shown
            assert result.text.startswith("".join(deltas[:k])), where
        failing = [k for k, chunk in enumerate(events) if any(e.probability != e.probability for e in chunk)]
        if failing:
            failed_cases += 1
            assert result.error and result.intervened, where
            # fail closed keeps exactly what was released up to the failing check (its own step's
            # token is dropped; a prefill is never removed), then refuses
            released = "".join(deltas[: failing[0] + 1])
            kept = model.tokenizer.decode(result.token_ids[: result.intervention_index], skip_special_tokens=True)
            # (a trailing incomplete UTF-8 sequence is held back from the stream until it completes)
            assert kept.startswith(released) and set(kept[len(released):]) <= {"\ufffd"}, where
            assert result.text[len(kept):].lstrip("\n").startswith(PREFIX), where
    assert failed_cases >= 3  # the property was exercised on the failure path ...
    assert {"eos", "stop", "length"} <= {reason for reason, _ in reasons}  # ... and on every ending
    assert (("eos", True) in reasons or ("refusal_length", True) in reasons) and ("length", False) in reasons


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("decoding", [True, False])
def test_fail_closed_keeps_released_text_and_streams_the_refusal(model, failure, decoding):
    # benign after the prefill pass and at steps 1-4; the check of step 5 fails
    policy = SafetyPolicy(schedule="each", strategic_decoding=decoding)
    deltas, _, result = streamed(model, [-5.0] * 5 + [failure], policy=policy, max_new_tokens=12)
    assert result.intervened and result.error and result.tokens_before_intervention == 4
    assert ("head exploded" in result.error) == (failure == "raise")
    assert "".join(deltas) == result.text
    released_before = model.tokenizer.decode(result.token_ids[:4], skip_special_tokens=True)
    assert result.text.startswith(released_before + "\n\n" + PREFIX)
    assert [e.outcome for e in result.events][-1] == "fail_closed"


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failing_check_stops_generation_with_strategic_decoding_off(model, failure):
    policy = SafetyPolicy(schedule="each", strategic_decoding=False)
    script_head(model, [-5.0, -5.0, -5.0, failure])
    r = model.generate(PROMPTS[0], policy=policy, max_new_tokens=12)
    assert r.error and r.intervened and r.tokens_before_intervention == 2
    assert r.text.split("\n\n")[-1].startswith(PREFIX)
    assert len(r.events) == 4  # no check after the refusal


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failing_check_fails_only_its_own_row(model, failure):
    """Row 1's first check fails (non-finite, or the head raises whenever it is in the batch);
    rows 0 and 2 decode exactly as they do alone."""
    policy = SafetyPolicy(schedule="each")
    seen = script_head(model, [])
    model.generate(PROMPTS[1], policy=policy, max_new_tokens=1)
    poisoned = seen[0][0]  # row 1's query-only check, as the prefill pass computes it

    def head(hidden):
        hit = torch.isclose(hidden, poisoned, atol=1e-4).all(dim=-1)
        if failure == "raise" and bool(hit.any()):
            raise RuntimeError("head exploded")
        return torch.where(hit, torch.tensor(float("nan")), torch.tensor(-5.0))

    model.cls_logits = head
    batch = model.generate_batch(PROMPTS, policy=policy, max_new_tokens=8)
    assert batch[1].intervened and batch[1].error and batch[1].text.startswith(PREFIX)
    for prompt, together in zip([PROMPTS[0], PROMPTS[2]], [batch[0], batch[2]]):
        alone = model.generate(prompt, policy=policy, max_new_tokens=8)
        assert not together.intervened and together.error is None
        assert together.token_ids == alone.token_ids
