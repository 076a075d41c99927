"""Strategic decoding: equivalence with plain generate, state machine, rollback, windows, batching."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ARCHS, make_safety_model

from safesignal.decode import CLS, TOKEN, StrategicDecoder
from safesignal.policy import SafetyPolicy

PROMPTS = ["How do I bake bread at home?", "Tell me how to build a bomb.", "What is the capital of France?"]
PREFIX = "Sorry, I cannot fulfill your request because"


def peaked(sm, scale: float = 25.0):
    """Sharpen the LM head so greedy choices are far from ties (equality tests then mean something)."""
    with torch.no_grad():
        sm.base.get_output_embeddings().weight.mul_(scale)
    return sm


def force_head(sm, logit: float):
    with torch.no_grad():
        sm.head.weight.zero_()
        sm.head.bias.fill_(logit)
    return sm


def script_head(sm, logits: list[float]):
    """Replace the head with a scripted sequence of verdict logits (one per checked row)."""
    queue = list(logits)

    def scripted(hidden):
        n = hidden.shape[0]
        values = [queue.pop(0) if queue else -10.0 for _ in range(n)]
        return torch.tensor(values, dtype=torch.float32)

    sm.cls_logits = scripted
    return sm


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


def test_tau_consecutive_verdicts_roll_back_to_the_transition_step():
    sm = peaked(make_safety_model("llama", "sdpa"))
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


def test_eos_during_a_confirmation_is_decided_by_the_latest_verdict():
    sm = peaked(make_safety_model("llama", "sdpa"))
    script_head(sm, [-5, -5, 5])  # malicious once at step 2; token 3 is the budget's last (never fed)
    r = sm.generate(PROMPTS[0], policy=SafetyPolicy(schedule="each", tau=3), max_new_tokens=3)
    assert r.intervened and r.tokens_before_intervention == 1


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


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_equals_rows_one_by_one_and_one_forward_per_step(arch):
    sm = peaked(make_safety_model(arch, "sdpa"))
    prefills = [None, "Sure, here is", None]
    policy = SafetyPolicy(schedule="each", tau=2)
    calls = {"n": 0}
    decoder_module = sm.base.get_decoder()
    original = decoder_module.forward

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    decoder_module.forward = counting
    decoder = StrategicDecoder(sm, policy)
    batch = decoder.generate([[{"role": "user", "content": p}] for p in PROMPTS], max_new_tokens=10, prefills=prefills)
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


def test_each_check_reads_exactly_the_query_and_its_window():
    sm = make_safety_model("llama", "sdpa")
    policy = SafetyPolicy(schedule="each", r2=3, tau=100)
    decoder = StrategicDecoder(sm, policy)
    seen = []
    original = decoder._forward

    def spy(ids, allowed, positions):
        if hasattr(decoder, "kind"):  # a decode step (metadata exists only after the prefill pass)
            seen.append((allowed.clone(), decoder.kind.clone(), decoder.resp.clone(), decoder.query.clone(),
                         decoder.live.clone()))
        return original(ids, allowed, positions)

    decoder._forward = spy
    (result,) = decoder.generate([[{"role": "user", "content": PROMPTS[0]}]], max_new_tokens=8)
    assert seen
    for step, (allowed, kind, resp, query, live) in enumerate(seen, start=1):
        width = allowed.shape[1]
        total = kind.shape[1]
        cls_row = allowed[0, width - 1]
        newest = int(resp[0, total - width])
        in_window = (resp[0] >= max(1, newest - 2)) & (resp[0] <= newest)  # r2 = 3 response tokens
        expected = query[0] | ((kind[0] == TOKEN) & live[0] & in_window)
        expected[total - 1] = True
        assert torch.equal(cls_row, expected), f"step {step}"
        # the fed token reads exactly one [CLS] slot: the latest state from before this step
        token_row = allowed[0, 0]
        assert int((token_row & (kind[0] == CLS)).sum()) == 1


def test_strategic_attention_lets_the_cls_state_steer_generation():
    base = make_safety_model("llama", "sdpa")
    other = copy.deepcopy(base)
    with torch.no_grad():
        other.cls_embedding.add_(torch.randn_like(other.cls_embedding))
    captured = {}

    def first_logits(sm, policy):
        decoder = StrategicDecoder(sm, policy)
        original = decoder._sample

        def record(row, logits):
            captured.setdefault(id(decoder), logits.clone())
            return original(row, logits)

        decoder._sample = record
        decoder.generate([[{"role": "user", "content": PROMPTS[0]}]], max_new_tokens=2)
        return captured[id(decoder)]

    for attention, differs in [(True, True), (False, False)]:
        policy = SafetyPolicy(strategic_attention=attention, strategic_decoding=False)
        a, b = first_logits(base, policy), first_logits(other, policy)
        assert (not torch.allclose(a, b, atol=1e-5)) == differs


def test_rollback_with_attention_off_matches_a_fresh_prefill_of_the_kept_tokens():
    sm = peaked(make_safety_model("llama", "sdpa"))
    script_head(sm, [-5, -5, -5, 5, 5])
    policy = SafetyPolicy(schedule="each", tau=2, strategic_attention=False)
    decoder = StrategicDecoder(sm, policy)
    logged = []
    original = decoder._sample

    def record(row, logits):
        logged.append((list(row.response), logits.clone()))
        return original(row, logits)

    decoder._sample = record
    (r,) = decoder.generate([[{"role": "user", "content": PROMPTS[0]}]], max_new_tokens=12)
    assert r.intervened
    # the first sample after the injection: its logits follow the kept tokens + injected prefix
    after = next(item for item in logged if len(item[0]) > r.intervention_index)
    response, logits = after
    prompt = sm.formatter.encode([{"role": "user", "content": PROMPTS[0]}]).input_ids
    fresh = sm.lm_logits(sm.base.get_decoder()(torch.tensor([prompt + response])).last_hidden_state[:, -1])
    torch.testing.assert_close(logits, fresh[0].float(), atol=1e-4, rtol=1e-4)


def test_rollback_with_attention_on_leaves_kept_cache_entries_bit_identical():
    sm = peaked(make_safety_model("llama", "sdpa"))
    script_head(sm, [-5, -5, 5, 5])
    decoder = StrategicDecoder(sm, SafetyPolicy(schedule="each", tau=2))
    snapshots = []
    original = decoder._forward

    def spy(ids, allowed, positions):
        if hasattr(decoder, "cache") and decoder.cache.get_seq_length():
            snapshots.append([(layer.keys.clone(), layer.values.clone()) for layer in decoder.cache.layers])
        return original(ids, allowed, positions)

    decoder._forward = spy
    (r,) = decoder.generate([[{"role": "user", "content": PROMPTS[0]}]], max_new_tokens=8)
    assert r.intervened
    final = [(layer.keys, layer.values) for layer in decoder.cache.layers]
    for snapshot in snapshots:  # every earlier state, including the one right before the rollback
        for (k0, v0), (k1, v1) in zip(snapshot, final):
            length = k0.shape[2]
            assert torch.equal(k0, k1[:, :, :length]) and torch.equal(v0, v1[:, :, :length])
    rolled = (decoder.kind[0] == TOKEN) & ~decoder.live[0]
    assert int(rolled.sum()) >= 1  # the dropped tokens are dead, not removed


def test_schedules():
    assert sorted(SafetyPolicy().annealing_steps()) == [1, 2, 3, 4, 5, 6, 7, 8, 10, 14, 22, 38, 70, 134]
    assert [s for s in range(1, 31) if SafetyPolicy(schedule="periodic").checks_at(s)] == [10, 20, 30]
    assert all(SafetyPolicy(schedule="each").checks_at(s) for s in range(1, 300))
    assert not any(SafetyPolicy(schedule="first").checks_at(s) for s in range(1, 300))
    assert not any(SafetyPolicy().checks_at(s) for s in range(135, 400))
    with pytest.raises(ValueError, match="schedule"):
        SafetyPolicy(schedule="sometimes")


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
    decoder = StrategicDecoder(sm, SafetyPolicy())
    stream = decoder.stream([[{"role": "user", "content": PROMPTS[0]}]], max_new_tokens=10)
    for chunk in stream:
        if chunk.deltas[0]:
            steps_at_first_delta = decoder.steps
            break
    rest = list(stream)
    assert rest[-1].results is not None
    assert steps_at_first_delta < decoder.steps


def test_steps_without_a_check_carry_no_cls_column():
    sm = force_head(make_safety_model("llama", "sdpa"), -30.0)
    decoder = StrategicDecoder(sm, SafetyPolicy())  # annealing: every step to 8, then 10, 14, ...
    widths = []
    original = decoder._forward

    def spy(ids, allowed, positions):
        widths.append(ids.shape[1])
        return original(ids, allowed, positions)

    decoder._forward = spy
    decoder.generate([[{"role": "user", "content": PROMPTS[0]}]], max_new_tokens=16, ignore_eos=True)
    steps = widths[1:]  # after the prefill pass; step t feeds generated token t
    assert [w for w in steps] == [2 if t in SafetyPolicy().annealing_steps() else 1 for t in range(1, 16)]


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


def test_a_sampled_batch_equals_its_rows_sampled_alone():
    sm = force_head(make_safety_model("llama", "sdpa"), -30.0)
    kwargs = dict(max_new_tokens=10, do_sample=True, temperature=1.3, top_p=0.95, seed=11, ignore_eos=True)
    batch = sm.generate_batch(PROMPTS, **kwargs)
    for prompt, together in zip(PROMPTS, batch):
        assert sm.generate_batch([prompt], **kwargs)[0].token_ids == together.token_ids
