"""Strategic decoding: equivalence with plain generate, state machine, rollback, windows, batching."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ARCHS, ATTNS, make_safety_model

from decoding_scripts import PREFIX, PROMPTS, force_head, peaked, script_head, script_lm, text_ids

from safesignal.decoding import Request, StrategicDecoder
from safesignal.decoding.policy import SafetyPolicy


def requests(prompts, policy=None, prefills=None, **kwargs) -> list[Request]:
    prefills = prefills or [None] * len(prompts)
    return [Request([{"role": "user", "content": p}], prefill=f, policy=policy or SafetyPolicy(), **kwargs)
            for p, f in zip(prompts, prefills)]


def recording_lm(sm):
    """Wrap the LM head: returns the list of float logits of every call, in order."""
    calls, original = [], sm.lm_logits

    def record(hidden):
        logits = original(hidden)
        calls.append(logits.float().clone())
        return logits

    sm.lm_logits = record
    return calls


def hf_greedy(sm, prompt: str, max_new_tokens: int) -> list[int]:
    ids = sm.formatter.encode([{"role": "user", "content": prompt}]).input_ids
    out = sm.base.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sm.tokenizer.eos_token_id,
        pad_token_id=sm.tokenizer.pad_token_id,
    )
    return out[0, len(ids) :].tolist()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_benign_head_with_levers_off_equals_plain_greedy_generate(arch, attn):
    sm = force_head(peaked(make_safety_model(arch, attn)), -30.0)
    policy = SafetyPolicy(strategic_attention=False, strategic_decoding=False, schedule="each")
    for prompt in PROMPTS[:2]:
        ours = sm.generate(prompt, policy=policy, max_new_tokens=12)
        theirs = hf_greedy(sm, prompt, 12)
        eos = sm.tokenizer.eos_token_id
        assert ours.token_ids == [t for t in theirs if t != eos][: len(ours.token_ids)]
        assert len(ours.token_ids) == len([t for t in theirs if t != eos])
        assert not ours.intervened and all(e.label == "benign" for e in ours.events)


@pytest.mark.parametrize("prefill", [None, "Sure, here is"])
def test_malicious_head_always_continues_with_the_refusal(prefill):
    sm = force_head(make_safety_model("llama", "sdpa"), 30.0)
    results = sm.generate_batch(PROMPTS, max_new_tokens=8, prefills=[prefill] * len(PROMPTS))
    expected = (prefill + "\n\n" if prefill else "") + PREFIX
    for r in results:
        assert r.text.startswith(expected)
        assert r.intervened and r.tokens_before_intervention == 0
        assert [e.step for e in r.events] == [0]  # one check, then none after the injection
        assert r.events[0].rule == ("prefill" if prefill else "query")


@pytest.mark.parametrize("attn", ATTNS)
def test_tau_consecutive_verdicts_roll_back_to_the_transition_step(attn):
    sm = peaked(make_safety_model("llama", attn))
    # after prefill: benign; steps 1, 2 benign; 3, 4, 5 malicious (τ = 3) -> roll back to step 3
    script_head(sm, [-5, -5, -5, 5, 5, 5])
    policy = SafetyPolicy(schedule="each", tau=3)
    r = sm.generate(PROMPTS[0], policy=policy, max_new_tokens=20)
    assert r.intervened and r.tokens_before_intervention == 2
    assert [e.step for e in r.events] == [0, 1, 2, 3, 4, 5]
    assert [e.rule for e in r.events][3:] == ["rule2", "rule3", "rule3"]
    kept = sm.tokenizer.decode(r.token_ids[: r.intervention_index])
    assert r.text.startswith(kept) and r.text[len(kept) :].lstrip("\n").startswith(PREFIX)


def test_a_benign_verdict_clears_the_transition_and_returns_to_the_schedule():
    sm = peaked(make_safety_model("llama", "sdpa"))
    # malicious at 2 and 3, benign at 4 (τ = 3 not reached), then the annealing schedule resumes
    script_head(sm, [-5, -5, 5, 5, -5] + [-5] * 40)
    r = sm.generate(PROMPTS[0], policy=SafetyPolicy(tau=3), max_new_tokens=40)
    assert not r.intervened
    steps = [e.step for e in r.events]
    assert steps[:5] == [0, 1, 2, 3, 4]
    expected = sorted(s for s in SafetyPolicy().annealing_steps() if s <= len(r.token_ids) - 1)
    assert steps[1:] == [s for s in expected]
    assert [e.rule for e in r.events][2:5] == ["rule2", "rule3", "rule3"]


def test_rollback_never_enters_the_prefill_and_counts_only_generated_tokens():
    sm = peaked(make_safety_model("llama", "sdpa"))
    script_head(sm, [-5, 5, 5, 5])  # transition at the very first generated token
    r = sm.generate(PROMPTS[1], prefill="Sure, here is", policy=SafetyPolicy(schedule="each"), max_new_tokens=10)
    assert r.intervened and r.tokens_before_intervention == 0
    assert r.text.startswith("Sure, here is\n\n" + PREFIX)


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("latest", ["malicious", "benign"])
def test_eos_during_a_confirmation_is_decided_by_the_latest_verdict(attn, latest):
    sm = make_safety_model("llama", attn)
    words = sm.tokenizer("Mix flour water", add_special_tokens=False)["input_ids"]
    script_lm(sm, words[:3])  # three tokens, then EOS (sampled from step 3's logits)
    # benign after the prefill pass and at step 1; malicious at step 2 starts a confirmation (τ = 3)
    script_head(sm, [-5, -5, 5, 5 if latest == "malicious" else -5])
    r = sm.generate(PROMPTS[0], policy=SafetyPolicy(schedule="each", tau=3), max_new_tokens=10)
    assert [e.step for e in r.events[:4]] == [0, 1, 2, 3]
    if latest == "malicious":  # EOS came mid-confirmation: roll back to step 2 and refuse
        assert r.intervened and r.tokens_before_intervention == 1 and r.token_ids[:1] == words[:1]
        assert r.text.startswith(sm.tokenizer.decode(words[:1]) + "\n\n" + PREFIX)
        assert r.finish_reason == "eos"  # the refusal's own EOS
    else:  # the benign verdict at step 3 cleared the confirmation: EOS finishes
        assert not r.intervened and r.token_ids == words[:3] and r.finish_reason == "eos"


@pytest.mark.parametrize("ending", ["length", "stop"])
def test_the_token_that_ends_a_row_is_checked(ending):
    sm = make_safety_model("llama", "sdpa")
    words = sm.tokenizer("Mix flour water salt", add_special_tokens=False)["input_ids"]
    script_lm(sm, words, then=words[0])
    # benign up to step 3; the check of step 4 (the row's last token) is malicious, τ = 1
    script_head(sm, [-5, -5, -5, -5, 5])
    stop = [sm.tokenizer.decode(words[3:4]).strip()] if ending == "stop" else None
    r = sm.generate(PROMPTS[0], policy=SafetyPolicy(schedule="each", tau=1), max_new_tokens=4 if ending == "length" else 9,
                    stop=stop)
    assert [e.step for e in r.events[:5]] == [0, 1, 2, 3, 4]
    assert r.events[4].window[1] == 4  # the last token is in its check's window
    assert r.intervened and r.tokens_before_intervention == 3


def test_injection_off_keeps_checking_with_rule1_and_never_rolls_back():
    sm = peaked(make_safety_model("llama", "sdpa"))
    script_head(sm, [5] * 50)
    policy = SafetyPolicy(schedule="each", strategic_decoding=False, r1=3)
    r = sm.generate(PROMPTS[1], policy=policy, max_new_tokens=6)
    assert not r.intervened and PREFIX not in r.text
    assert [e.rule for e in r.events] == ["query"] + ["rule1"] * (len(r.events) - 1)
    assert all(e.window[0] == 1 and e.window[1] <= 3 for e in r.events[1:])


@pytest.mark.parametrize("failure", ["nan", "raise"])
def test_a_broken_check_fails_closed(failure):
    sm = make_safety_model("llama", "sdpa")

    def broken(hidden):
        if failure == "raise":
            raise RuntimeError("head exploded")
        return torch.full((hidden.shape[0],), float("nan"))

    sm.cls_logits = broken
    r = sm.generate(PROMPTS[0], max_new_tokens=6)
    assert r.intervened and r.text.startswith(PREFIX) and r.error
    assert ("head exploded" in r.error) == (failure == "raise")


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("arch", ARCHS)
def test_batch_equals_rows_one_by_one_and_one_forward_per_step(arch, attn):
    sm = peaked(make_safety_model(arch, attn))
    prefills = [None, "Sure, here is", None]
    policy = SafetyPolicy(schedule="each", tau=2)
    calls = {"n": 0}
    decoder_module = sm.base.get_decoder()
    original = decoder_module.forward

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    decoder_module.forward = counting
    decoder = StrategicDecoder(sm)
    batch = decoder.generate(requests(PROMPTS, policy, prefills, max_new_tokens=10))
    assert calls["n"] == decoder.model_calls == decoder.steps + 1
    decoder_module.forward = original
    for prompt, prefill, together in zip(PROMPTS, prefills, batch):
        alone = sm.generate(prompt, policy=policy, max_new_tokens=10, prefill=prefill)
        assert alone.token_ids == together.token_ids
        assert [(e.step, e.label, e.window) for e in alone.events] == [
            (e.step, e.label, e.window) for e in together.events
        ]
        for a, b in zip(alone.events, together.events):
            assert a.probability == pytest.approx(b.probability, abs=1e-5)


def test_strategic_attention_lets_the_cls_state_steer_generation():
    base = make_safety_model("llama", "sdpa")
    other = copy.deepcopy(base)
    with torch.no_grad():
        other.cls_embedding.add_(torch.randn_like(other.cls_embedding))

    def first_logits(sm, policy):
        calls = recording_lm(sm)
        sm.generate(PROMPTS[0], policy=policy, max_new_tokens=2)
        sm.lm_logits = type(sm).lm_logits.__get__(sm)
        return calls[0]

    for attention, differs in [(True, True), (False, False)]:
        policy = SafetyPolicy(strategic_attention=attention, strategic_decoding=False)
        a, b = first_logits(base, policy), first_logits(other, policy)
        assert (not torch.allclose(a, b, atol=1e-5)) == differs


@pytest.mark.parametrize("attn", ATTNS)
def test_rollback_with_attention_off_matches_a_fresh_prefill_of_the_kept_tokens(attn):
    sm = make_safety_model("llama", attn)
    # benign at 0-2, malicious at 3 and 4 (τ = 2): step 4 rolls back to token 3 and injects
    script_head(sm, [-5, -5, -5, 5, 5])
    policy = SafetyPolicy(schedule="each", tau=2, strategic_attention=False)
    calls = recording_lm(sm)
    r = sm.generate(PROMPTS[0], policy=policy, max_new_tokens=12)
    assert r.intervened and r.intervention_index == 2
    injected = sm.tokenizer("\n\n" + PREFIX, add_special_tokens=False)["input_ids"]
    assert r.token_ids[2 : 2 + len(injected)] == injected
    # calls: the prefill pass, steps 1-4, then step 5 feeds the refusal after the kept tokens
    kept = r.token_ids[: 2 + len(injected)]
    prompt = sm.formatter.encode([{"role": "user", "content": PROMPTS[0]}]).input_ids
    with torch.no_grad():
        fresh = sm.lm_logits(sm.base.get_decoder()(torch.tensor([prompt + kept])).last_hidden_state[:, -1])
    torch.testing.assert_close(calls[5][0], fresh[0].float(), atol=1e-5, rtol=1e-5)


def test_schedules():
    assert sorted(SafetyPolicy().annealing_steps()) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 14, 22, 38, 70, 134]
    assert [s for s in range(1, 31) if SafetyPolicy(schedule="periodic").checks_at(s)] == [10, 20, 30]
    assert all(SafetyPolicy(schedule="each").checks_at(s) for s in range(1, 300))
    assert not any(SafetyPolicy(schedule="first").checks_at(s) for s in range(1, 300))
    assert not any(SafetyPolicy(annealing_tail_period=0).checks_at(s) for s in range(135, 400))
    # the default adds a check every 32 steps after annealing's last one (134)
    assert [s for s in range(135, 300) if SafetyPolicy().checks_at(s)] == [166, 198, 230, 262, 294]
    tail = SafetyPolicy(annealing_tail_period=50)
    assert [s for s in range(1, 400) if tail.checks_at(s)] == sorted(SafetyPolicy().annealing_steps()) + [184, 234, 284, 334, 384]
    with pytest.raises(ValueError, match="annealing_tail_period"):
        SafetyPolicy(annealing_tail_period=-1)
    with pytest.raises(ValueError, match="schedule"):
        SafetyPolicy(schedule="sometimes")


def test_within_drops_only_a_tail_that_has_no_check_in_the_span():
    policies = [SafetyPolicy(), SafetyPolicy(annealing_tail_period=5), SafetyPolicy(annealing_tail_period=0),
                SafetyPolicy(schedule="periodic"), SafetyPolicy(annealing_stop=20, annealing_tail_period=7)]
    for policy in policies:
        for span in (1, 30, 134, 165, 166, 300):
            narrowed = policy.within(span)
            # the same checks over the span, counted step by step
            assert [s for s in range(1, span + 1) if narrowed.checks_at(s)] == \
                   [s for s in range(1, span + 1) if policy.checks_at(s)]
    assert SafetyPolicy().within(165).annealing_tail_period == 0  # first tail check: 134 + 32 = 166
    assert SafetyPolicy().within(166).annealing_tail_period == 32
    assert SafetyPolicy(annealing_stop=20, annealing_tail_period=7).within(29).annealing_tail_period == 7  # 22 + 7


def test_policy_yaml_round_trip_and_unknown_field(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("tau: 5\nschedule: periodic\nperiod: 4\n")
    policy = SafetyPolicy.from_yaml(path)
    assert (policy.tau, policy.schedule, policy.period) == (5, "periodic", 4)
    path.write_text("tao: 5\n")
    with pytest.raises(ValueError, match=r"unknown SafetyPolicy field\(s\) \['tao'\]"):
        SafetyPolicy.from_yaml(path)
    assert SafetyPolicy.paper().refusal_prefix.startswith("Sorry, I can't fullfill")


def test_sampling_is_seeded_and_decoding_parameters_apply():
    sm = force_head(make_safety_model("llama", "sdpa"), -30.0)
    a = sm.generate(PROMPTS[0], max_new_tokens=10, do_sample=True, temperature=1.5, seed=3)
    b = sm.generate(PROMPTS[0], max_new_tokens=10, do_sample=True, temperature=1.5, seed=3)
    c = sm.generate(PROMPTS[0], max_new_tokens=10, do_sample=True, temperature=1.5, seed=4)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    greedy = sm.generate(PROMPTS[0], max_new_tokens=10)
    top1 = sm.generate(PROMPTS[0], max_new_tokens=10, do_sample=True, top_k=1, seed=9)
    assert top1.token_ids == greedy.token_ids  # top_k = 1 is greedy
    with pytest.raises(ValueError, match="temperature"):
        sm.generate(PROMPTS[0], max_new_tokens=2, do_sample=True, temperature=0)


def test_stop_strings_end_generation():
    sm = force_head(make_safety_model("llama", "sdpa"), -30.0)
    free = sm.generate(PROMPTS[0], max_new_tokens=12)
    assert len(free.token_ids) >= 4
    piece = sm.tokenizer.decode(free.token_ids[2:4])
    stopped = sm.generate(PROMPTS[0], max_new_tokens=12, stop=[piece])
    assert stopped.finish_reason == "stop" and piece in stopped.text
    assert len(stopped.token_ids) <= 4


def test_stream_releases_early_never_retracts_and_matches_generate():
    sm = peaked(make_safety_model("llama", "sdpa"))
    script_head(sm, [-5, -5, -5, 5, 5, 5] + [-5] * 60)
    policy = SafetyPolicy(schedule="each", tau=3)
    pieces, events, first_delta_step = [], [], None
    decoder_steps = []
    for delta in sm.stream(PROMPTS[0], policy=policy, max_new_tokens=16):
        if delta.text and first_delta_step is None:
            first_delta_step = len(events)
        pieces.append(delta.text)
        events += delta.events
        if delta.done:
            result = delta.result
        decoder_steps.append(len(events))
    assert result.intervened and result.tokens_before_intervention == 2
    assert "".join(pieces) == result.text  # nothing retracted: deltas add up to the final text
    assert first_delta_step is not None and first_delta_step < len(events)  # text arrived before the end
    assert [e.step for e in events] == [e.step for e in result.events]
    # the token that started the confirmation (step 3) was never released before the rollback
    released_before_injection = "".join(pieces).split("\n\n" + PREFIX)[0]
    assert released_before_injection == sm.tokenizer.decode(result.token_ids[:2])


def test_stream_first_delta_comes_before_the_last_token_is_computed():
    sm = force_head(make_safety_model("llama", "sdpa"), -30.0)
    decoder = StrategicDecoder(sm)
    stream = decoder.stream(requests(PROMPTS[:1], max_new_tokens=10))
    for chunk in stream:
        if chunk.deltas[0]:
            steps_at_first_delta = decoder.steps
            break
    rest = list(stream)
    assert rest[-1].results is not None
    assert steps_at_first_delta < decoder.steps


def test_steps_without_a_check_carry_no_cls_column():
    sm = force_head(make_safety_model("llama", "sdpa"), -30.0)
    widths = []
    original = sm.hidden_states

    def spy(ids, mask, positions, cache=None, inputs_embeds=None):
        widths.append(ids.shape[1])
        return original(ids, mask, positions, cache=cache, inputs_embeds=inputs_embeds)

    sm.hidden_states = spy
    StrategicDecoder(sm).generate(requests(PROMPTS[:1], max_new_tokens=16, ignore_eos=True))
    steps = widths[1:]  # after the prefill pass; step t feeds generated token t (the 16th is not
    # fed: it ends the row and no check reads it)
    assert 16 not in SafetyPolicy().annealing_steps()
    assert steps == [2 if t in SafetyPolicy().annealing_steps() else 1 for t in range(1, 16)]


def test_rolling_back_one_row_leaves_the_other_rows_unchanged():
    sm = peaked(make_safety_model("llama", "sdpa"))
    calls = {"n": 0}

    def scripted(hidden):  # row 0 turns malicious at steps 2 and 3 (τ = 2); rows 1 and 2 stay benign
        calls["n"] += 1
        n = hidden.shape[0]
        if n == 3 and calls["n"] in (3, 4):
            return torch.tensor([5.0, -5.0, -5.0])
        return torch.full((n,), -5.0)

    sm.cls_logits = scripted
    policy = SafetyPolicy(schedule="each", tau=2)
    batch = sm.generate_batch(PROMPTS, policy=policy, max_new_tokens=10, ignore_eos=True)
    assert batch[0].intervened and batch[0].tokens_before_intervention == 1
    sm.cls_logits = lambda hidden: torch.full((hidden.shape[0],), -5.0)
    for prompt, together in zip(PROMPTS[1:], batch[1:]):
        alone = sm.generate(prompt, policy=policy, max_new_tokens=10, ignore_eos=True)
        assert not together.intervened and alone.token_ids == together.token_ids


def test_a_sliding_window_shorter_than_the_sequence_is_rejected():
    sm = make_safety_model("mistral", "sdpa")
    sm.base.config.sliding_window = 24
    with pytest.raises(ValueError, match="sliding_window 24"):
        sm.generate(PROMPTS[0], max_new_tokens=8)




def test_a_fixed_length_stream_equals_the_fixed_length_generate():
    sm = make_safety_model("llama", "sdpa")
    script_head(sm, [], default=-5.0)
    script_lm(sm, text_ids(sm, "ab"))  # then EOS forever: only ignore_eos reaches the budget
    expected = sm.generate(PROMPTS[0], max_new_tokens=9, ignore_eos=True)
    assert len(expected.token_ids) == 9 and expected.finish_reason == "length"
    script_lm(sm, text_ids(sm, "ab"))  # the script is consumed per call
    streamed = list(sm.stream(PROMPTS[0], max_new_tokens=9, ignore_eos=True))
    assert "".join(d.text for d in streamed) == expected.text
    assert streamed[-1].result.token_ids == expected.token_ids


@pytest.mark.parametrize("arch", ARCHS)
def test_a_last_token_no_check_reads_is_not_fed(arch):
    # the budget's last token used to be fed to end the row even when no check rode with it: one
    # forward more than plain generate (65 for 64 tokens in benchmarks/decode_overhead.py)
    sm = force_head(make_safety_model(arch, "eager"), -20.0)
    decoder_module = sm.base.get_decoder()
    calls = {"n": 0}
    handle = decoder_module.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        results = {}
        # annealing checks steps 1-8, 10, 14: step 12 reads nothing, step 8 reads the window
        for n, forwards in ((12, 12), (8, 9), (13, 13)):
            calls["n"] = 0
            decoder = StrategicDecoder(sm)
            request = Request([{"role": "user", "content": PROMPTS[0]}], max_new_tokens=n, ignore_eos=True)
            (results[n],) = decoder.generate([request])
            assert len(results[n].token_ids) == n and calls["n"] == decoder.model_calls == forwards
            assert results[n].finish_reason == "length"
        # ending unfed changes no token: the shorter runs are the longer run's beginning
        assert results[13].token_ids[:12] == results[12].token_ids
        assert results[12].text == sm.tokenizer.decode(results[12].token_ids, skip_special_tokens=True)
    finally:
        handle.remove()
