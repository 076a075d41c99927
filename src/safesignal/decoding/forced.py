"""The training-side view of strategic decoding: one forward over a prompt plus a whole given
response, with every `[CLS]` check the decoder would take over it (issue "adaptive attacks").

The decoder feeds a response one token per step and lets each check ride in the forward of its
step; nothing in that loop depends on the order of forwards except which `[CLS]` state each
token reads and which tokens each check reads, both fixed by the check plan. Unrolled, the
prefill pass and every step are one sequence

    [pad ...] [CLS A] [prompt] [response: prefill, then the given tokens] [check] [check] ...

under `masks.forced_allowed`: the last prompt row and the prefill rows read slot A; the token
fed at step t reads the newest check taken before step t (slot A, or the prefill pass's slot B);
a check reads itself, the query (where `window_includes_query`) and its window. Every check
slot has position id 0, so where it sits in the sequence does not matter. The LM logits
predicting each response token and every check's P(malicious) then equal the decoder's on the
same tokens (tests/test_decoding_forced_view.py, 1e-5), and they are differentiable: GCG and
the embedding attack optimise through this (`inputs_embeds`).

A plan is the decoder's checks over a response whose verdicts never inject: `benign_plan`
when every verdict is benign (what an attacker aims for), `replay` for any verdicts (it
re-plans where the state machine leaves the plan; the streaming benchmark uses it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..formatting import EncodedExample
from ..masks import NO_SLOT, forced_allowed, to_additive
from .engine import attention_dtype
from .fsm import Check, RowSafety, SafetyEvent, own_refusal
from .policy import SafetyPolicy


@dataclass
class ForcedRow:
    """One conversation with its response given: `example` is the prompt and any prefill
    (formatter.encode(messages, prefill, add_eos=False)), `response_ids` the tokens after it."""

    example: EncodedExample
    response_ids: list[int]
    policy: SafetyPolicy = field(default_factory=SafetyPolicy)
    checks: list[Check] | None = None  # None: benign_plan

    @property
    def prefill_length(self) -> int:
        return self.example.response_length

    @property
    def response(self) -> list[int]:
        """Every response token in order: the prefill's, then the given ones."""
        return self.example.input_ids[self.example.prompt_length:] + list(self.response_ids)


def first_check(policy: SafetyPolicy, prefill_length: int) -> Check:
    """The prefill pass's check (step 0): slot A over the query, or with a prefill a slot over
    the query and the prefill's last r2 tokens."""
    if not prefill_length:
        return Check(0, None, "query")
    return Check(0, (max(1, prefill_length - policy.r2 + 1), prefill_length), "prefill")


def benign_plan(policy: SafetyPolicy, prefill_length: int, new_tokens: int) -> list[Check]:
    """The checks the decoder takes over `new_tokens` tokens after a prefill of `prefill_length`
    when every verdict is benign: the prefill pass's, then the schedule's (Rule 2), in order."""
    safety = RowSafety(policy)
    checks = [first_check(policy, prefill_length)]
    for step in range(1, new_tokens + 1):
        check = safety.check_for(step, prefill_length + step)
        if check is not None:
            checks.append(check)
    return checks


@dataclass
class ForcedBatch:
    """A left-padded batch of forced rows, with where to read each prediction and verdict."""

    input_ids: torch.Tensor  # (B, L)
    allowed: torch.Tensor  # (B, L, L) boolean
    position_ids: torch.Tensor  # (B, L)
    predicts: torch.Tensor  # (B, R) row whose logits predict response token r + 1, NO_SLOT past the end
    check_rows: torch.Tensor  # (B, C) row of each check's [CLS] slot, NO_SLOT past the end
    checks: list[list[Check]]
    response_start: list[int]  # per row: sequence index of response token 1

    def mask(self, dtype: torch.dtype) -> torch.Tensor:
        return to_additive(self.allowed, dtype)


def _reader_of(checks: list[Check], check_slots: list[int], step: int) -> int:
    """The slot the token fed at `step` reads: the newest check taken before that step."""
    slot = check_slots[0]
    for check, s in zip(checks, check_slots):
        if check.step < step:
            slot = s
    return slot


def build_forced_batch(rows: list[ForcedRow], *, cls_token_id: int, pad_token_id: int,
                       device: torch.device | str = "cpu") -> ForcedBatch:
    """Lay `rows` out as one forward (see the module docstring)."""
    plans = [row.checks if row.checks is not None else benign_plan(row.policy, row.prefill_length, len(row.response_ids))
             for row in rows]
    for i, (row, plan) in enumerate(zip(rows, plans)):
        if len(row.example.input_ids) > row.policy.max_prompt_tokens:
            raise ValueError(f"row {i}: prompt (with prefill) is {len(row.example.input_ids)} tokens, over the "
                             f"policy's max_prompt_tokens={row.policy.max_prompt_tokens}")
        if not plan or plan[0].step != 0:
            raise ValueError(f"row {i}: a check plan starts with the prefill pass's check (step 0)")
        if any(c.step > len(row.response_ids) for c in plan):
            raise ValueError(f"row {i}: a check at a step past the response's {len(row.response_ids)} tokens")
    # one slot per check, except a first check over the query alone, which is slot A itself
    extra = [len(plan) - (plan[0].window is None) for plan in plans]
    lengths = [1 + len(r.example.input_ids) + len(r.response_ids) + e for r, e in zip(rows, extra)]
    size, length = len(rows), max(lengths)
    max_response = max(len(r.response) for r in rows)

    ids = torch.full((size, length), pad_token_id, dtype=torch.long)
    real = torch.zeros((size, length), dtype=torch.bool)
    query = torch.zeros((size, length), dtype=torch.bool)
    is_slot = torch.zeros((size, length), dtype=torch.bool)
    reads = torch.full((size, length), NO_SLOT, dtype=torch.long)
    response_index = torch.zeros((size, length), dtype=torch.long)
    slot_window = torch.zeros((size, length, 2), dtype=torch.long)
    slot_reads_query = torch.zeros((size, length), dtype=torch.bool)
    positions = torch.zeros((size, length), dtype=torch.long)
    predicts = torch.full((size, max_response), NO_SLOT, dtype=torch.long)
    check_rows = torch.full((size, max(len(p) for p in plans)), NO_SLOT, dtype=torch.long)
    starts = []
    for i, (row, plan) in enumerate(zip(rows, plans)):
        tokens = row.example.input_ids + list(row.response_ids)
        prompt, n = row.example.prompt_length, len(tokens)
        a = length - lengths[i]  # slot A, the first real column
        first = a + 1  # first ordinary token
        starts.append(first + prompt)
        real[i, a:] = True
        ids[i, a] = cls_token_id
        ids[i, first:first + n] = torch.tensor(tokens)
        query[i, first:first + len(row.example.query_mask)] = torch.tensor(row.example.query_mask, dtype=torch.bool)
        positions[i, first:first + n] = torch.arange(1, n + 1)
        response_index[i, first + prompt:first + n] = torch.arange(1, n - prompt + 1)
        is_slot[i, a] = True
        slot_reads_query[i, a] = True
        column = first + n
        check_slots = []
        for check in plan:
            if check.window is None:
                check_slots.append(a)
                continue
            ids[i, column], is_slot[i, column] = cls_token_id, True
            slot_window[i, column] = torch.tensor(check.window)
            slot_reads_query[i, column] = row.policy.window_includes_query
            check_slots.append(column)
            column += 1
        check_rows[i, :len(plan)] = torch.tensor(check_slots)
        if row.policy.strategic_attention:
            # the last prompt row and the prefill rows read slot A; the token fed at step t,
            # the newest check before step t
            reads[i, first + prompt - 1:first + prompt + row.prefill_length] = a
            for step in range(1, len(row.response_ids) + 1):
                reads[i, first + prompt + row.prefill_length + step - 1] = _reader_of(plan, check_slots, step)
        # response token r + 1 is predicted by the row before it (the last prompt row for r = 0)
        predicts[i, :n - prompt] = torch.arange(first + prompt - 1, first + n - 1)

    allowed = forced_allowed(real.long(), query, is_slot, reads, response_index, slot_window, slot_reads_query)
    move = {"device": device}
    return ForcedBatch(ids.to(**move), allowed.to(**move), positions.to(**move), predicts.to(**move),
                       check_rows.to(**move), plans, starts)


@dataclass
class ForcedOutput:
    logits: torch.Tensor  # (B, R, V) LM logits predicting each response token
    cls_logits: torch.Tensor  # (B, C) each check's safety logit (NaN past a row's plan)
    batch: ForcedBatch


def forced_batch(sm, rows: list[ForcedRow]) -> ForcedBatch:
    """`build_forced_batch` with `sm`'s `[CLS]` and pad ids, on its device."""
    return build_forced_batch(rows, cls_token_id=sm.cls_token_id, pad_token_id=sm.tokenizer.pad_token_id,
                              device=sm.device)


def forced_output(sm, hidden: torch.Tensor, batch: ForcedBatch, index_of: torch.Tensor | None = None) -> ForcedOutput:
    """The LM logits and verdicts `batch` asks for, read from `hidden`; `index_of` maps a
    batch column to its row of `hidden` when the forward ran on some columns only."""
    predicts, slots = batch.predicts.clamp(min=0), batch.check_rows.clamp(min=0)
    if index_of is not None:
        predicts, slots = index_of[predicts], index_of[slots]
        if bool((predicts < 0).any() or (slots < 0).any()):
            raise AssertionError("a prediction or a check sits among the columns the forward did not run")
    index = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    logits = sm.lm_logits(hidden[index, predicts])
    cls = sm.cls_logits(hidden[index, slots]).float()
    cls = torch.where(batch.check_rows >= 0, cls, torch.full_like(cls, float("nan")))
    return ForcedOutput(logits, cls, batch)


def forced_forward(sm, rows: list[ForcedRow], inputs_embeds: torch.Tensor | None = None,
                   batch: ForcedBatch | None = None) -> ForcedOutput:
    """One forward of `rows` through `sm` (a SafetyModel), gradients kept where autograd is on.
    `inputs_embeds` (B, L, H) replaces the token embeddings of `batch` (built by the caller,
    with `forced_batch`, so that it knows where each token sits)."""
    if batch is None:
        batch = forced_batch(sm, rows)
    hidden = sm.hidden_states(batch.input_ids, batch.mask(attention_dtype(sm)), batch.position_ids, inputs_embeds=inputs_embeds)
    return forced_output(sm, hidden, batch)


def replay(sm, rows: list[ForcedRow], max_forwards: int | None = None,
           until: Callable[[SafetyEvent], bool] | None = None) -> list[list[SafetyEvent]]:
    """Every row's safety events over its given response as the decoder would record them, any
    verdicts allowed (strategic decoding must be off: an injection would replace the response).
    With `until`, a row's events end at the first one it accepts, as a decoder cancelled right
    after that step would leave them (no end-of-answer decision).

    Start from the benign plan; after each forward, run each row's state machine over the
    verdicts in plan order while it asks for the check the plan has; where it asks for another
    (a malicious verdict started a confirmation, a benign one ended it), keep what agreed, plan
    the rest as the machine would from its new state with no further state change, and go
    again. A verdict depends only on earlier tokens and checks, so what agreed stays right: a
    settled verdict keeps the probability it was settled with (another layout differs in the
    last bits, which must never flip a verdict that sits on the threshold), so each forward
    settles at least one more check and a row needs at most one forward per check.
    """
    for i, row in enumerate(rows):
        if row.policy.strategic_decoding:
            raise ValueError(f"row {i}: replay needs strategic_decoding=False (an injection replaces the response)")
    def decode(ids: list[int]) -> str:
        return sm.tokenizer.decode(ids, skip_special_tokens=True)

    settled: list[list[tuple[Check, float]]] = [[] for _ in rows]
    done = [False] * len(rows)
    forwards = 0
    # one forward per check at most (see above), and a check per step plus the prefill pass's
    bound = max_forwards if max_forwards is not None else max(len(r.response_ids) for r in rows) + 2
    while not all(done):
        if forwards >= bound:
            raise RuntimeError(f"replay: not settled after {forwards} forwards")
        todo = [i for i, d in enumerate(done) if not d]
        batch_rows = [ForcedRow(rows[i].example, rows[i].response_ids, rows[i].policy,
                                _plan_from(rows[i], settled[i], decode)) for i in todo]
        with torch.inference_mode():
            out = forced_forward(sm, batch_rows)
        forwards += 1
        probabilities = torch.sigmoid(out.cls_logits).tolist()
        for i, row, plan, p in zip(todo, batch_rows, out.batch.checks, probabilities):
            settled[i], done[i] = _settle(rows[i], plan, p, decode, until, settled[i])
    return [_events(row, s, decode, until) for row, s in zip(rows, settled)]


Decode = Callable[[list[int]], str]


def _machine(row: ForcedRow, settled: list[tuple[Check, float]], decode: Decode) -> RowSafety:
    """The row's state machine after the settled verdicts."""
    safety = RowSafety(row.policy)
    for check, probability in settled:
        _apply(safety, check, probability, row, decode)
    return safety


def _apply(safety: RowSafety, check: Check, probability: float, row: ForcedRow, decode: Decode) -> None:
    """One verdict, as the decoder applies it (frontier 0: replay never fails closed on a finite value)."""
    if check.step == 0:
        safety.first_verdict(probability, check.window, None, 0)
        return
    newest = row.prefill_length + check.step
    response = row.response[:newest]
    safety.verdict(check, probability, None, 0, newest,
                   lambda first: own_refusal(decode, response, row.prefill_length, row.policy, first))


def _plan_from(row: ForcedRow, settled: list[tuple[Check, float]], decode: Decode) -> list[Check]:
    """The settled checks, then those the machine takes from its current state if no verdict
    changed it again (`check_for` reads the state, never moves it)."""
    safety = _machine(row, settled, decode)
    plan = [c for c, _ in settled] or [first_check(row.policy, row.prefill_length)]
    last = settled[-1][0].step if settled else 0
    for step in range(last + 1, len(row.response_ids) + 1):
        check = safety.check_for(step, row.prefill_length + step)
        if check is not None:
            plan.append(check)
    return plan


def _settle(row: ForcedRow, plan: list[Check], probabilities: list[float], decode: Decode,
            until=None, before: list[tuple[Check, float]] = ()) -> tuple[list[tuple[Check, float]], bool]:
    """The plan's prefix the state machine agrees with, and whether that is the whole response
    (or reaches an event `until` accepts). The plan starts with the checks settled `before`,
    which keep their probabilities."""
    probabilities = [p for _, p in before] + list(probabilities[len(before):])
    safety = RowSafety(row.policy)
    settled = []
    planned = {c.step: (c, p) for c, p in zip(plan, probabilities)}
    _apply(safety, plan[0], probabilities[0], row, decode)
    settled.append((plan[0], probabilities[0]))
    for step in range(1, len(row.response_ids) + 1):
        if until is not None and until(safety.events[-1]):
            return settled, True
        wanted = safety.check_for(step, row.prefill_length + step)
        have = planned.get(step)
        if wanted is None and have is None:
            continue
        if wanted is None or have is None or wanted != have[0]:
            return settled, False
        _apply(safety, have[0], have[1], row, decode)
        settled.append(have)
    return settled, True


def _events(row: ForcedRow, settled: list[tuple[Check, float]], decode: Decode, until=None) -> list[SafetyEvent]:
    safety = _machine(row, settled, decode)
    if until is not None and any(until(e) for e in safety.events):
        return safety.events  # cut there: the answer's end is never reached
    response = row.response
    safety.at_end(lambda first: own_refusal(decode, response, row.prefill_length, row.policy, first))
    return safety.events
