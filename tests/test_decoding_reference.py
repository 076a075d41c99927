"""Strategic decoding against an independent reference: one cache-free forward over every slot
the decode wrote, with a mask written here from DESIGN.md §Decoding.

The reference lists each slot (the prompt, each fed token, each `[CLS]` check, the refusal)
with exactly what it may read: a fed token reads the live tokens so far and the `[CLS]` state
from before its step (the previous one, not the one refreshed in its own forward); a check
reads the query and its Rule 1/2/3 window; rolled-back tokens are read by nobody after the
rollback. The decoder's hidden states (what its LM head and safety head were given) must match
the reference's to 1e-5; a reference with the fresh `[CLS]` read, or a wrong window, must not.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ATTNS, make_safety_model
from decoding_scripts import PREFIX, PROMPTS, script_head, script_lm, text_ids

from safesignal.decoding.policy import SafetyPolicy

pytestmark = pytest.mark.usefixtures("no_grad")

ATOL = 1e-5
CHANGED = 1e-3


class Reference:
    """Slots in cache order, each with a position id and the names of the slots it reads."""

    def __init__(self, sm, messages):
        self.sm = sm
        example = sm.formatter.encode(messages)
        self.ids, self.positions, self.reads, self.index = [], [], [], {}
        self.query = [f"p{i}" for i, q in enumerate(example.query_mask) if q]
        self.add("A", sm.cls_token_id, 0, self.query)
        self.prompt = [f"p{i}" for i in range(len(example.input_ids))]
        for i, token in enumerate(example.input_ids):
            last = i == len(example.input_ids) - 1  # the last prompt row reads slot A
            self.add(f"p{i}", token, i + 1, self.prompt[: i + 1] + (["A"] if last else []))

    def add(self, name, token, position, reads):
        self.index[name] = len(self.ids)
        self.ids.append(token)
        self.positions.append(position)
        self.reads.append(list(reads))

    def hidden(self) -> dict[str, torch.Tensor]:
        n = len(self.ids)
        allowed = torch.eye(n, dtype=torch.bool)
        for i, reads in enumerate(self.reads):
            for name in reads:
                allowed[i, self.index[name]] = True
        mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]
        hidden = self.sm.hidden_states(torch.tensor([self.ids]), mask, torch.tensor([self.positions]))[0]
        return {name: hidden[i] for name, i in self.index.items()}


def decode_with_records(attn, tokens, verdicts, policy, messages, max_new_tokens, prefill=None):
    sm = make_safety_model("llama", attn)
    with torch.no_grad():  # a strong [CLS] state, so reading the wrong one shows
        sm.cls_embedding.mul_(20.0)
    lm_seen = script_lm(sm, tokens)
    head_seen = script_head(sm, verdicts)
    result = sm.generate(messages, policy=policy, max_new_tokens=max_new_tokens, prefill=prefill)
    return sm, result, [h[0] for h in lm_seen], [h[0] for h in head_seen]


def assert_matches(ours: list[torch.Tensor], expected: list[torch.Tensor], wrong: list[torch.Tensor] | None = None):
    for k, (a, b) in enumerate(zip(ours, expected, strict=True)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=lambda m, k=k: f"slot {k}: {m}")
    if wrong is not None:  # the reference can tell: a wrong rule does not match
        assert max(float((a - b).abs().max()) for a, b in zip(ours, wrong)) > CHANGED


@pytest.mark.parametrize("attn", ATTNS)
def test_rule2_rule3_windows_previous_cls_reads_and_rollback_match_the_reference(attn):
    messages = [{"role": "user", "content": PROMPTS[1]}]
    # query, steps 1-3 benign; malicious at 4 (S = 4) and 5: τ = 2 rolls back to token 4
    policy = SafetyPolicy(schedule="each", tau=2, r2=2, r3=1, refusal_max_new_tokens=2)
    probe = make_safety_model("llama", attn)
    tokens = text_ids(probe, "Mix flour water salt yeast")  # LM call k chooses tokens[k]
    injected = text_ids(probe, "\n\n" + PREFIX)
    sm, r, lm_seen, head_seen = decode_with_records(attn, tokens, [-5, -5, -5, -5, 5, 5], policy, messages, 8)
    assert r.intervened and r.intervention_index == 3
    assert r.token_ids == tokens[:3] + injected + tokens[6:8]  # call 5's choice died with the rollback

    def reference(cls_read: str, rule2_width: int):
        ref = Reference(sm, messages)
        n = len(ref.prompt)
        fed = []
        windows = {}
        for t in range(1, 6):  # steps 1-5 feed tokens 1-5, each with a check
            previous = "A" if t == 1 else f"C{t - 1}"
            fed.append(f"t{t}")
            ref.add(f"t{t}", tokens[t - 1], n + t, ref.prompt + fed + [previous if cls_read == "previous" else f"C{t}"])
            # Rule 2 over the last r2 tokens while benign; Rule 3 at S = 4: [S - r2, min(now, S + r3)]
            lo, hi = (max(1, t - rule2_width + 1), t) if t <= 4 else (4 - 2, min(t, 4 + 1))
            windows[t] = (lo, hi)
            ref.add(f"C{t}", sm.cls_token_id, 0, ref.query + [f"t{i}" for i in range(lo, hi + 1)])
        if cls_read == "fresh":  # the fresh rule: a token reads the check of its own step
            for t in range(1, 6):
                ref.reads[ref.index[f"t{t}"]].append(f"C{t}")
        kept = ref.prompt + ["t1", "t2", "t3"]  # tokens 4 and 5 are dead from here on
        for j, token in enumerate(injected):  # step 6 feeds the refusal at token 4's position on
            ref.add(f"i{j}", token, n + 4 + j, kept + [f"i{k}" for k in range(j + 1)] + ["C5"])
        inj = [f"i{k}" for k in range(len(injected))]
        # step 7 feeds the refusal's first budget token (call 6 chose it); the second, the budget's
        # last, ends the row unfed: no check reads it. No checks after the injection
        ref.add("t7", tokens[6], n + 4 + len(injected), kept + inj + ["t7", "C5"])
        hidden = ref.hidden()
        lm = ([hidden[f"p{n - 1}"]] + [hidden[f"t{t}"] for t in range(1, 6)]
              + [hidden[inj[-1]], hidden["t7"]])
        return lm, [hidden["A"]] + [hidden[f"C{t}"] for t in range(1, 6)], windows

    lm, checks, windows = reference("previous", rule2_width=2)
    assert [e.window for e in r.events[1:]] == [windows[t] for t in range(1, 6)]
    lm_fresh, _, _ = reference("fresh", rule2_width=2)
    assert_matches(lm_seen, lm, wrong=lm_fresh)
    _, checks_wide, _ = reference("previous", rule2_width=3)
    assert_matches(head_seen, checks, wrong=checks_wide)


@pytest.mark.parametrize("attn", ATTNS)
def test_rule1_windows_and_a_prefill_slot_match_the_reference(attn):
    """Injection off, the prefill pass reads malicious: checks go on with Rule 1 (the first r1
    response tokens, the prefill counting as response). The prefill rows read slot A; the
    prefill pass's second slot B (query + the last r2 prefill tokens) is the first verdict and
    the state step 1's token reads."""
    messages = [{"role": "user", "content": PROMPTS[1]}]
    policy = SafetyPolicy(schedule="each", strategic_decoding=False, r1=3, r2=2)
    probe = make_safety_model("llama", attn)
    prefill = text_ids(probe, "Sure")
    assert len(prefill) >= 2
    tokens = text_ids(probe, "Mix flour water")[:4]
    sm, r, lm_seen, head_seen = decode_with_records(attn, tokens, [5, 5, 5, 5, 5], policy, messages, 4,
                                                    prefill=probe.tokenizer.decode(prefill))
    f = len(prefill)
    assert not r.intervened and r.token_ids == prefill + tokens

    ref = Reference(sm, messages)
    n = len(ref.prompt)
    names = []
    for k, token in enumerate(prefill):  # prefill rows read slot A (query only)
        names.append(f"f{k}")
        ref.add(f"f{k}", token, n + 1 + k, ref.prompt + names + ["A"])
    ref.add("B", sm.cls_token_id, 0, ref.query + names[-2:])  # query + the last r2 = 2 prefill tokens
    previous, response = "B", list(names)
    for t in range(1, 5):
        response.append(f"t{t}")
        ref.add(f"t{t}", tokens[t - 1], n + f + t, ref.prompt + response + [previous])
        ref.add(f"C{t}", sm.cls_token_id, 0, ref.query + response[:3])  # Rule 1: the first r1 = 3
        previous = f"C{t}"
    hidden = ref.hidden()
    assert [e.window for e in r.events] == [(f - 1, f)] + [(1, min(f + t, 3)) for t in range(1, 5)]
    assert [e.rule for e in r.events] == ["prefill"] + ["rule1"] * 4
    assert_matches(lm_seen, [hidden[names[-1]]] + [hidden[f"t{t}"] for t in range(1, 5)])
    assert_matches(head_seen, [hidden["B"]] + [hidden[f"C{t}"] for t in range(1, 5)])
