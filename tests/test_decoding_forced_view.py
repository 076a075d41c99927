"""The one-forward view of forced decoding (`decoding.forced`): its LM logits and verdicts are
the decoder's on the same tokens, its replay records the decoder's events, and it is
differentiable through `inputs_embeds` with each check reading exactly its window."""

from __future__ import annotations

import pytest
import torch
from conftest import make_safety_model
from decoding_scripts import PROMPTS, text_ids

from safesignal.decoding import Request, SafetyPolicy
from safesignal.decoding.forced import ForcedRow, benign_plan, build_forced_batch, forced_forward, replay
from safesignal.masks import NO_SLOT

QUIET = dict(strategic_decoding=False)  # the decoder then never replaces the forced tokens
ANSWERS = ["Sure, here is a plan: 1. Gather the materials. 2. Mix them well and wait for an hour.",
           "Mix flour, water and salt, then knead the dough for ten minutes and let it rest.",
           "Paris is the capital of France, and it has been for a very long time indeed."]


def user(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


@pytest.fixture(scope="module", params=[("llama", "sdpa"), ("qwen2", "eager")], ids=["llama-sdpa", "qwen2-eager"])
def sm(request):
    return make_safety_model(*request.param)


def decoder_run(sm, request: Request):
    """The decoder's result, and the LM logits of each of its forwards (row 0)."""
    seen = []
    original = sm.lm_logits

    def recording(hidden):
        out = original(hidden)
        seen.append(out[0].detach().float().clone())
        return out

    sm.lm_logits = recording
    try:
        result = sm.generate_requests([request])[0]
    finally:
        del sm.lm_logits
    return result, seen


def forced_row(sm, request: Request) -> ForcedRow:
    example = sm.formatter.encode(request.messages, request.prefill or "", add_eos=False)
    return ForcedRow(example, list(request.forced_response_ids), request.policy)


POLICIES = {
    "annealing": SafetyPolicy(threshold=0.999, **QUIET),
    "each": SafetyPolicy(schedule="each", threshold=0.999, **QUIET),
    "periodic": SafetyPolicy(schedule="periodic", period=3, threshold=0.999, r2=4, **QUIET),
    "no_query": SafetyPolicy(schedule="each", threshold=0.999, window_includes_query=False, **QUIET),
    "no_attention": SafetyPolicy(schedule="each", threshold=0.999, strategic_attention=False, **QUIET),
}


@pytest.mark.parametrize("policy", POLICIES, ids=list(POLICIES))
@pytest.mark.parametrize("prefill", [None, "Step one is"])
def test_one_forward_gives_the_decoders_logits_and_verdicts_on_the_same_tokens(sm, policy, prefill):
    answer = text_ids(sm, ANSWERS[0])
    request = Request(user(PROMPTS[1]), prefill=prefill, policy=POLICIES[policy], forced_response_ids=answer)
    result, decoder_logits = decoder_run(sm, request)
    assert not any(e.label == "malicious" for e in result.events)  # the benign path: the plan is the schedule's
    row = forced_row(sm, request)
    with torch.inference_mode():
        out = forced_forward(sm, [row])
    k = row.prefill_length
    # the decoder's forward t gives the logits that predict response token k + t + 1
    for t, expected in enumerate(decoder_logits[:len(answer)]):
        torch.testing.assert_close(out.logits[0, k + t].float(), expected, atol=1e-5, rtol=0)
    plan = out.batch.checks[0]
    assert [(c.step, c.window) for c in plan] == [(e.step, e.window) for e in result.events]
    probabilities = torch.sigmoid(out.cls_logits[0, :len(plan)]).tolist()
    assert probabilities == pytest.approx([e.probability for e in result.events], abs=1e-5)


def test_a_forced_batch_equals_its_rows_one_by_one(sm):
    requests = [Request(user(p), prefill=f, policy=pol, forced_response_ids=text_ids(sm, a))
                for p, f, pol, a in zip(PROMPTS, [None, "Well,", None],
                                        [POLICIES["annealing"], POLICIES["periodic"], POLICIES["no_query"]], ANSWERS)]
    rows = [forced_row(sm, r) for r in requests]
    with torch.inference_mode():
        together = forced_forward(sm, rows)
        for i, row in enumerate(rows):
            alone = forced_forward(sm, [row])
            n, c = len(row.response), len(alone.batch.checks[0])
            torch.testing.assert_close(together.logits[i, :n], alone.logits[0, :n], atol=1e-5, rtol=0)
            torch.testing.assert_close(together.cls_logits[i, :c], alone.cls_logits[0, :c], atol=1e-5, rtol=0)
            assert together.cls_logits[i, c:].isnan().all()


def test_the_benign_plan_is_the_schedules_steps_with_rule2_windows():
    policy = SafetyPolicy(r2=10)
    plan = benign_plan(policy, prefill_length=0, new_tokens=40)
    assert [c.step for c in plan] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 14, 22, 38]
    assert plan[0].window is None and plan[-1].window == (29, 38) and plan[1].window == (1, 1)
    with_prefill = benign_plan(policy, prefill_length=12, new_tokens=2)
    assert [(c.step, c.window) for c in with_prefill] == [(0, (3, 12)), (1, (4, 13)), (2, (5, 14))]


@pytest.mark.parametrize("prefill", [None, "Step one is"])
def test_replay_records_the_decoders_events_whatever_the_verdicts(sm, prefill):
    answer = text_ids(sm, ANSWERS[1])
    probe = Request(user(PROMPTS[0]), prefill=prefill, policy=SafetyPolicy(schedule="each", threshold=0.999, **QUIET),
                    forced_response_ids=answer)
    events = sm.generate_requests([probe])[0].events
    # Thresholds above the first verdict and inside the later ones' range, so that
    # confirmations start mid-answer, clear and complete; each midway between two verdicts, so
    # no verdict sits on the threshold (the two computations differ in the last bits).
    later = sorted(e.probability for e in events[1:] if e.probability > events[0].probability)
    thresholds = [(later[k] + later[k + 1]) / 2 for k in (len(later) // 3, len(later) // 2)]
    rules, outcomes = set(), set()
    for threshold in thresholds:
        for schedule, tau in (("each", 1), ("each", 2), ("annealing", 2)):
            policy = SafetyPolicy(schedule=schedule, threshold=threshold, tau=tau, **QUIET)
            request = Request(user(PROMPTS[0]), prefill=prefill, policy=policy, forced_response_ids=answer)
            expected = sm.generate_requests([request])[0].events
            ours = replay(sm, [forced_row(sm, request)])[0]
            assert [(e.step, e.label, e.window, e.rule, e.outcome) for e in ours] == \
                [(e.step, e.label, e.window, e.rule, e.outcome) for e in expected]
            assert [e.probability for e in ours] == pytest.approx([e.probability for e in expected], abs=1e-5)
            rules |= {e.rule for e in ours}
            outcomes |= {e.outcome for e in ours}
    assert "rule3" in rules and "confirmed" in outcomes  # the replay left the benign plan


def test_replay_refuses_a_policy_that_would_inject(sm):
    request = Request(user(PROMPTS[0]), policy=SafetyPolicy(), forced_response_ids=text_ids(sm, "Hello"))
    with pytest.raises(ValueError, match="strategic_decoding=False"):
        replay(sm, [forced_row(sm, request)])


def test_embeddings_in_give_the_same_forward_and_each_check_has_no_gradient_past_its_window(sm):
    policy = SafetyPolicy(schedule="periodic", period=4, r2=3, **QUIET)
    row = forced_row(sm, Request(user(PROMPTS[1]), policy=policy, forced_response_ids=text_ids(sm, ANSWERS[0])))
    batch = build_forced_batch([row], cls_token_id=sm.cls_token_id, pad_token_id=sm.tokenizer.pad_token_id)
    embeds = sm.embed(batch.input_ids).detach().requires_grad_(True)
    out = forced_forward(sm, [row], inputs_embeds=embeds, batch=batch)
    with torch.inference_mode():
        plain = forced_forward(sm, [row])
    torch.testing.assert_close(out.cls_logits, plain.cls_logits, atol=1e-5, rtol=0, equal_nan=True)
    start = batch.response_start[0]
    prompt_columns = torch.tensor(row.example.query_mask).nonzero().squeeze(1) + start - row.example.prompt_length
    for c, check in enumerate(batch.checks[0]):
        if check.window is None:
            continue
        (grad,) = torch.autograd.grad(out.cls_logits[0, c], embeds, retain_graph=True)
        moved = grad[0].abs().sum(-1) > 0
        lo, hi = check.window
        assert not moved[start + hi:start + len(row.response)].any()  # no response token past the window
        assert moved[start + lo - 1:start + hi].all()  # every window token
        assert moved[prompt_columns].all()  # the query
        others = [int(r) for j, r in enumerate(batch.check_rows[0]) if j != c and int(r) != NO_SLOT]
        assert not moved[[r for r in others if r > int(batch.check_rows[0, c])]].any()  # no later check


def test_replay_settles_even_when_each_forward_moves_a_verdict_across_the_threshold(sm, monkeypatch):
    """Another layout (more check slots, other padding) changes the last bits of a verdict; one
    on the threshold must not flip back and forth between forwards and keep replay re-planning."""
    import safesignal.decoding.forced as forced

    answer = text_ids(sm, ANSWERS[1])
    base = SafetyPolicy(schedule="each", threshold=0.999, **QUIET)
    row = forced_row(sm, Request(user(PROMPTS[0]), policy=base, forced_response_ids=answer))
    with torch.inference_mode():
        logits = forced_forward(sm, [row]).cls_logits[0]
    threshold = float(torch.sigmoid(logits[5]))  # the verdict at step 5 sits on the threshold
    calls = []
    original = forced.forced_forward

    def jittered(*args, **kwargs):  # each forward nudges every verdict the other way
        out = original(*args, **kwargs)
        calls.append(1)
        out.cls_logits = out.cls_logits + (1e-3 if len(calls) % 2 else -1e-3)
        return out

    monkeypatch.setattr(forced, "forced_forward", jittered)
    policy = SafetyPolicy(schedule="each", threshold=threshold, tau=2, **QUIET)
    events = replay(sm, [ForcedRow(row.example, answer, policy)])[0]
    assert len(calls) <= len(answer) + 2
    # every recorded label agrees with the probability it was recorded with
    assert all((e.probability > threshold) == (e.label == "malicious") for e in events)
