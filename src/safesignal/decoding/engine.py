"""Strategic decoding: the batched decode loop over the KV cache (DESIGN.md §Decoding).

One forward per step for the whole batch. Each row feeds its newest token(s) and, in the same
forward, a `[CLS]` query row when its state machine checks at that step (a dead filler when
another row checks and it does not; no `[CLS]` column at all when no row checks). Every row
carries its own request: policy, sampling and seed, budget, stop strings. Rows leave the batch
when they finish and may join a running one (`join`: their prefill pass, merged into the
cache), so a server can batch continuously; each row decodes exactly as it would alone.

The pieces: `fsm` decides (windows, τ, injection, self-refusal, fail closed), `slots` keeps
the cache and what each slot is, `masks` turns that into who reads what, `sampler` picks
tokens, `stream` says what may be released. This module only ties them together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..batching import collate
from ..formatting import EncodedExample
from ..masks import (CLS, DEAD, NO_SLOT, TOKEN, decode_step_allowed, prefill_pass_allowed, prompt_head_allowed,
                     to_additive)
from .fast_linear import FastLinear, FastLinearConfig
from .fsm import Check, Inject, RowSafety, SafetyEvent, own_refusal
from .policy import SafetyPolicy
from .sampler import Sampler, Sampling
from .slots import Slots
from .prompt_embeddings import PromptEmbeddings, check_prompt_embeddings, embeds_with
from .stream import StreamChunk, TextRelease, release_frontier


@dataclass
class Request:
    """Everything one conversation asks for; a batch may mix requests freely."""

    messages: list[dict]
    prefill: str | None = None
    policy: SafetyPolicy = field(default_factory=SafetyPolicy)
    sampling: Sampling = field(default_factory=Sampling)
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False  # fixed-length runs (benchmarks)
    # Forced decoding: emit exactly these response tokens (after any prefill), then end, with
    # the policy's real checks riding along (the streaming-detection benchmark). EOS is not
    # needed; max_new_tokens still caps. An injection (strategic decoding on, or fail closed)
    # retracts them as usual and the model writes the refusal.
    forced_response_ids: list[int] | None = None
    # Vectors in place of some prompt tokens' input embeddings (a white-box embedding attack's
    # suffix); the pass over the prompt reads them, every later step reads them through the cache.
    prompt_embeddings: PromptEmbeddings | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be ≥ 1, got {self.max_new_tokens}")
        if self.forced_response_ids is not None and not self.forced_response_ids:
            raise ValueError("forced_response_ids: need at least one token (or None)")


@dataclass
class RowOutput:
    """One row's news since its last output (`StrategicDecoder.output`)."""

    delta: str
    events: list
    done: bool
    result: "GenerationResult | None" = None


@dataclass
class PromptHead:
    """Chunked prefill of one request (`StrategicDecoder.begin_head`): the prompt's first
    `target` tokens run through the model `chunk` tokens per forward (`advance_head`), into a
    cache of their own, between the running batch's steps; `join_head` then runs the rest of
    the prefill pass over them. The head stops before the last prompt row, the first row that
    reads `[CLS]`: no head token reads `[CLS]` or anything after it, so chunking changes no
    mask, and `[CLS]` (whose state depends on the whole query) is computed after the head."""

    request: Request
    example: EncodedExample
    target: int
    chunk: int
    cache: object
    length: int = 0  # head tokens in `cache` so far

    @property
    def done(self) -> bool:
        return self.length >= self.target


@dataclass
class GenerationResult:
    text: str  # the assistant response: prefill + kept generation + injected refusal + continuation
    token_ids: list[int]
    intervened: bool = False
    intervention_index: int | None = None  # response-token index where the injected text starts
    tokens_before_intervention: int | None = None  # model-generated tokens kept before it
    events: list[SafetyEvent] = field(default_factory=list)
    finish_reason: str = ""
    prefill: str = ""
    error: str | None = None  # why a check failed (the request was then refused)

    @property
    def self_refusals(self) -> list[SafetyEvent]:
        """Confirmations over the model's own refusal (nothing was injected for them)."""
        return [e for e in self.events if e.outcome == "self_refusal"]


def _ends_unread(row, check) -> bool:
    """The row's pending token is its last (budget or stop string), no check rides with it and no
    confirmation waits on a verdict: feeding it would compute nothing anyone reads."""
    return (row.ending is not None and check is None and not row.pending_injection
            and row.safety.state != "confirming")


class _Row:
    """One request in flight."""

    def __init__(self, request: Request, prompt_length: int, input_ids: list[int], device, decode):
        self.id = -1  # set when the row joins a batch
        self.request = request
        self.safety = RowSafety(request.policy)
        self.sampler = Sampler(request.sampling, device, request.forced_response_ids)
        self.release = TextRelease(decode)
        self.prompt_ids = input_ids[:prompt_length]
        self.response = list(input_ids[prompt_length:])  # prefill first
        self.prefill_length = len(self.response)
        # position id of response token k: each row counts its own (CLS 0, then 1, 2, ...)
        self.position_of = {k + 1: prompt_length + k + 1 for k in range(self.prefill_length)}
        self.position = len(input_ids) + 1  # of the next token fed
        self.budget = request.max_new_tokens
        if request.forced_response_ids is not None:
            self.budget = min(self.budget, len(request.forced_response_ids))
        self.generated = 0  # model-generated tokens taken since the start (or the injection)
        self.pending: list[int] = []  # tokens the next step feeds
        self.pending_injection = False
        self.ending: str | None = None  # finish reason once the pending token is the row's last
        self.frontier = self.prefill_length  # response tokens released (or releasable)
        self.done = False
        self.result = GenerationResult(text="", token_ids=[], prefill=request.prefill or "")
        self.events_sent = 0


def stop_token_ids(model) -> set[int]:
    """The ids that end an answer: the tokenizer's EOS and the LM's generation-config EOS(es)."""
    eos = {model.tokenizer.eos_token_id}
    config_eos = getattr(model.base.generation_config, "eos_token_id", None)
    eos |= set(config_eos) if isinstance(config_eos, (list, tuple)) else {config_eos}
    return {e for e in eos if e is not None}


class StrategicDecoder:
    """Runs strategic decoding for a batch of requests on a SafetyModel (duck-typed: anything
    with tokenizer, formatter, cls_token_id, device, base, hidden_states, lm_logits, cls_logits)."""

    def __init__(self, model, fast_linear: FastLinearConfig = FastLinearConfig()):
        self.sm = model
        # few-row matmuls take the path measured fastest for their shape (decode steps only)
        self.fast_linear = FastLinear(model.base, fast_linear)
        self.tokenizer = model.tokenizer
        self.model_calls = 0  # forwards issued: 1 prefill pass + 1 per step, whatever the batch size
        self.steps = 0
        self.eos_ids = stop_token_ids(model)
        self._reset()

    def _reset(self) -> None:
        self.rows: list[_Row] = []  # every row since `start` (minus those `forget` dropped)
        self.active: list[_Row] = []  # rows still decoding, in cache order
        self.slots: Slots | None = None
        self._by_id: dict[int, _Row] = {}
        self._next_id = 0

    # ------------------------------------------------------------------ public
    def generate(self, requests: list[Request]) -> list[GenerationResult]:
        """Run every request to completion."""
        for _ in self._run(requests):
            pass
        return self.results()

    def stream(self, requests: list[Request]):
        """Yield a `StreamChunk` after the prefill pass and after every step; the last one
        carries the results. A row's deltas concatenate to its final `text`."""
        for _ in self._run(requests):
            yield self._chunk(final=False)
        chunk = self._chunk(final=True)
        chunk.results = self.results()
        yield chunk

    def start(self, requests: list[Request]) -> list[int]:
        """Begin a batch: the prefill pass of `requests`; their row ids (0, 1, ...)."""
        self._reset()
        return self.join(requests)

    def join(self, requests: list[Request], examples: list[EncodedExample] | None = None) -> list[int]:
        """Add rows to the running batch (continuous batching): their prefill pass is a
        forward of its own, its cache merged into the batch's; from the next step on they
        decode with the others, each exactly as it would alone. Returns the rows' ids: they
        count up from 0 at `start`, so a row's id is its index in the order the rows came.
        `examples`: the requests as `encode` gave them (a caller that counted their tokens
        first does not tokenise them twice)."""
        if not requests:
            raise ValueError("requests: need at least one")
        return self._join(requests, None, examples)

    def encode(self, request: Request) -> EncodedExample:
        """The request's prompt and prefill as the prefill pass reads them (no length check)."""
        return self.sm.formatter.encode(request.messages, request.prefill or "", add_eos=False)

    def begin_head(self, request: Request, chunk_tokens: int, example: EncodedExample | None = None) -> PromptHead:
        """Start a chunked prefill of `request` (a long prompt that should not stall the running
        rows for its whole prefill): nothing runs yet; `advance_head` runs one chunk.
        `example`: as for `join`."""
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens: must be ≥ 1, got {chunk_tokens}")
        if request.prompt_embeddings is not None:
            raise ValueError("prompt_embeddings: a chunked prefill does not take them (join the request whole)")
        example = self._checked(0, request, example or self.encode(request))
        self._check_sliding_window([request], [example])
        return PromptHead(request, example, target=max(example.prompt_length - 1, 0), chunk=chunk_tokens,
                          cache=Slots.new_cache())

    def advance_head(self, head: PromptHead) -> None:
        """One forward over the head's next chunk (causal: these rows read no `[CLS]`)."""
        if head.done:
            return
        device = self.sm.device
        a, b = head.length, min(head.length + head.chunk, head.target)
        ids = torch.tensor([head.example.input_ids[a:b]], device=device)
        rows = torch.arange(a, b, device=device)
        allowed = (torch.arange(b, device=device)[None, :] <= rows[:, None])[None]
        with torch.inference_mode():
            self._forward(ids, allowed, (rows + 1)[None], head.cache)  # ordinary positions count from 1
        head.length = b

    def join_head(self, head: PromptHead) -> list[int]:
        """Join the request of a finished head: the rest of its prefill pass, over the head's cache."""
        if not head.done:
            raise ValueError(f"head: {head.length} of {head.target} tokens run; advance it first")
        return self._join([head.request], head, None)

    def _join(self, requests: list[Request], head: PromptHead | None,
              examples: list[EncodedExample] | None) -> list[int]:
        if examples is not None and len(examples) != len(requests):
            raise ValueError(f"examples: {len(examples)} for {len(requests)} requests")
        with torch.inference_mode():
            rows, slots = self._prefill(requests, head, examples)
            for row in rows:
                row.id, self._next_id = self._next_id, self._next_id + 1
                self._by_id[row.id] = row
            self.rows += rows
            if self.active:
                self.slots.merge(slots)
                self.active += rows
            else:
                self.slots, self.active = slots, rows
            self._after_step()
        return [row.id for row in rows]

    def step(self) -> None:
        """One forward for every active row (none when every row only ends: `steps` counts forwards)."""
        with torch.inference_mode(), self.fast_linear.applied():
            fed = self._step()
        self.steps += fed

    def cancel(self, row_id: int) -> None:
        """End row `row_id` now, keeping what it has (a client that left; a benchmark that has
        seen what it measures). Its result says "cancelled"."""
        row = self._row(row_id)
        if not row.done:
            row.done, row.ending, row.result.finish_reason = True, None, "cancelled"
            with torch.inference_mode():
                self._after_step()

    def results(self) -> list[GenerationResult]:
        """Every row's result so far, in the order the rows came (rows `forget` dropped excepted)."""
        return [self._finish(r) for r in self.rows]

    def output(self, row_id: int) -> RowOutput:
        """What row `row_id` released since its last output: text delta, new safety events, and
        once it is done its result. Deltas add up to the final text; released text is never retracted."""
        row = self._row(row_id)
        delta, events = self._release(row, final=row.done)
        return RowOutput(delta, events, row.done, self._finish(row) if row.done else None)

    def forget(self, row_id: int) -> None:
        """Drop a finished row from the decoder's books, so a decoder that serves for days holds
        only the rows in flight (a server calls it once a row's last output is read)."""
        row = self._row(row_id)
        if not row.done:
            raise ValueError(f"row {row_id}: still decoding (cancel it first)")
        del self._by_id[row_id]
        self.rows.remove(row)

    def _row(self, row_id: int) -> _Row:
        row = self._by_id.get(row_id)
        if row is None:
            raise KeyError(f"row {row_id}: no such row in this batch")
        return row

    def _run(self, requests: list[Request]):
        self.start(requests)
        yield
        while self.active:
            self.step()
            yield

    def _chunk(self, final: bool) -> StreamChunk:
        released = [self._release(row, final and row.done) for row in self.rows]
        return StreamChunk([d for d, _ in released], [e for _, e in released], [r.done for r in self.rows])

    @staticmethod
    def _release(row: _Row, final: bool) -> tuple[str, list[SafetyEvent]]:
        """The row's text delta up to its release frontier, and its events not yet handed out."""
        delta = row.release.delta(row.response[: row.frontier], final)
        events = row.safety.events[row.events_sent :]
        row.events_sent = len(row.safety.events)
        return delta, events

    # ------------------------------------------------------------------ prefill pass
    def _checked(self, i: int, request: Request, example: EncodedExample) -> EncodedExample:
        """`example` (request `i`'s encoding), refused when over the request's prompt limit."""
        limit = request.policy.max_prompt_tokens
        if len(example.input_ids) > limit:
            raise ValueError(
                f"conversation {i}: prompt (with prefill) is {len(example.input_ids)} tokens, over "
                f"the policy's max_prompt_tokens={limit}"
            )
        return example

    def _prefill(self, requests: list[Request], head: PromptHead | None = None,
                 examples: list[EncodedExample] | None = None) -> tuple[list[_Row], Slots]:
        """One forward over the prompts (and prefills) of `requests` (encoded as `examples`, or
        here): their rows and cache. With a `head` (one request), the forward covers what
        follows the head and reads the head from its cache."""
        sm = self.sm
        if head is None:
            examples = [self._checked(i, request, examples[i] if examples else self.encode(request))
                        for i, request in enumerate(requests)]
            self._check_sliding_window(requests, examples)
            check_prompt_embeddings(sm, ((q.prompt_embeddings, e, f"conversation {i}")
                                         for i, (q, e) in enumerate(zip(requests, examples))))
        else:
            examples = [head.example]
        rows = [_Row(q, e.prompt_length, e.input_ids, sm.device, self._decode) for q, e in zip(requests, examples)]
        skip = head.length if head is not None else 0  # prompt tokens already in the cache
        if skip:
            e = examples[0]
            examples = [EncodedExample(e.input_ids[skip:], e.query_mask[skip:], e.prompt_length - skip,
                                       e.supervised_from - skip)]

        batch = collate(examples, cls_token_id=sm.cls_token_id, pad_token_id=self.tokenizer.pad_token_id,
                        with_labels=False)
        batch = {k: (v.to(sm.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        size, length = batch["input_ids"].shape
        has_prefill = torch.tensor([e.response_length > 0 for e in examples], device=sm.device)
        # Rows with a prefill get a second [CLS] slot over query + the last r2 prefill tokens:
        # its verdict is the first one. Other rows carry a dead slot in that column.
        with_slot_b = bool(has_prefill.any())
        if with_slot_b:
            column = torch.full((size, 1), sm.cls_token_id, device=sm.device)
            batch["input_ids"] = torch.cat([batch["input_ids"], column], dim=1)
            batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(column)], dim=1)
            for key in ("query_mask", "window_mask"):
                batch[key] = torch.cat([batch[key], torch.zeros_like(column, dtype=torch.bool)], dim=1)
            length += 1
        start = [length - int(with_slot_b) - len(e.input_ids) for e in examples]  # first ordinary token
        slot_b = torch.where(has_prefill, length - 1, NO_SLOT)
        window_end = torch.full((size,), length, device=sm.device)
        positions = torch.zeros((size, length), dtype=torch.long, device=sm.device)
        response_index = torch.zeros((size, length), dtype=torch.long, device=sm.device)
        windows = []
        for i, (e, row) in enumerate(zip(examples, rows)):
            s, n = start[i], len(e.input_ids)
            positions[i, s : s + n] = torch.arange(skip + 1, skip + n + 1)
            response_index[i, s + e.prompt_length : s + n] = torch.arange(1, e.response_length + 1)
            if e.response_length:
                first = max(e.prompt_length, n - row.request.policy.r2)
                batch["window_mask"][i, s + first : s + n] = True
                window_end[i] = s + n - 1
                windows.append((first - e.prompt_length + 1, e.response_length))
            else:
                windows.append(None)
        strategic = torch.tensor([r.request.policy.strategic_attention for r in rows], device=sm.device)
        include_query = torch.tensor([r.request.policy.window_includes_query for r in rows], device=sm.device)
        reader_start = torch.where(strategic, batch["reader_start"], length)
        allowed = prefill_pass_allowed(batch["attention_mask"], batch["query_mask"], batch["slot_a"], reader_start,
                                       slot_b, batch["window_mask"], window_end, include_query)
        cache = Slots.new_cache()
        if skip:
            head_query = torch.tensor([head.example.query_mask[:skip]], device=sm.device)
            allowed = torch.cat([prompt_head_allowed(batch["attention_mask"], batch["slot_a"], slot_b,
                                                     batch["window_mask"], include_query, head_query), allowed], dim=-1)
            cache = head.cache
        embeds = embeds_with(sm, batch["input_ids"], [(i, start[i], q.prompt_embeddings) for i, q in enumerate(requests)
                                                      if q.prompt_embeddings is not None])
        hidden = self._forward(batch["input_ids"], allowed, positions, cache, inputs_embeds=embeds)
        logits = sm.lm_logits(hidden[:, length - 1 - int(with_slot_b)]).float()

        kind = torch.where(batch["attention_mask"].bool(), TOKEN, DEAD).to(torch.int8)
        kind[batch["input_ids"] == sm.cls_token_id] = CLS
        if with_slot_b:
            kind[~has_prefill, -1] = DEAD
        latest_cls = torch.where(has_prefill, slot_b, batch["slot_a"])
        query = batch["query_mask"].clone()
        if skip:  # the head's columns come first in the cache: prompt tokens
            kind = torch.cat([torch.full((size, skip), TOKEN, dtype=torch.int8, device=kind.device), kind], dim=1)
            response_index = torch.cat([torch.zeros((size, skip), dtype=torch.long, device=sm.device), response_index], 1)
            query = torch.cat([head_query, query], dim=1)
        slots = Slots(cache, kind, response_index, query, latest_cls + skip)

        verdicts = self._verdicts(hidden[torch.arange(size, device=sm.device), latest_cls])
        for row, (probability, error), window in zip(rows, verdicts, windows):
            action = row.safety.first_verdict(probability, window, error, row.frontier)
            if action is not None:
                self._inject(row, action)  # before any generated token: nothing to roll back
        for row, row_logits in zip(rows, logits):
            if not row.pending_injection:
                self._take(row, row_logits)
        return rows, slots

    # ------------------------------------------------------------------ one decode step
    def _step(self) -> bool:
        """One decode step; whether it ran a forward."""
        sm, rows = self.sm, self.active
        size = len(rows)
        checks: list[Check | None] = []
        for row in rows:
            fed_last = len(row.response) + len(row.pending)  # response index of the last token fed
            checks.append(None if row.pending_injection else row.safety.check_for(row.generated, fed_last))
        if all(_ends_unread(row, check) for row, check in zip(rows, checks)):
            # every row feeds its last token only to end, and no check would read it: no forward
            for row in rows:
                for token in row.pending:
                    self._append(row, token)
                row.pending = []
                self._end(row, row.ending)
            self._after_step()
            return False
        any_check = any(c is not None for c in checks)
        width = max(len(r.pending) for r in rows) + any_check

        ids = torch.full((size, width), self.tokenizer.pad_token_id, dtype=torch.long)
        kind = torch.full((size, width), DEAD, dtype=torch.int8)
        response_index = torch.zeros((size, width), dtype=torch.long)
        positions = torch.zeros((size, width), dtype=torch.long)
        window = torch.zeros((size, 2), dtype=torch.long)
        for i, (row, check) in enumerate(zip(rows, checks)):
            for k, token in enumerate(row.pending):
                ids[i, k], kind[i, k], positions[i, k] = token, TOKEN, row.position
                response_index[i, k] = self._append(row, token)
            if check is not None:
                ids[i, -1], kind[i, -1] = sm.cls_token_id, CLS
                window[i] = torch.tensor(check.window)
        device = sm.device
        self.slots.append(kind.to(device), response_index.to(device))
        policies = [r.request.policy for r in rows]
        allowed = decode_step_allowed(
            self.slots.kind, self.slots.live, self.slots.response_index, self.slots.query, width,
            self.slots.latest_cls, torch.tensor([p.strategic_attention for p in policies], device=device),
            window.to(device), torch.tensor([p.window_includes_query for p in policies], device=device),
        )
        with self.fast_linear.live_rows(kind != DEAD):  # dead fillers: nobody reads them, nothing to compute
            hidden = self._forward(ids.to(device), allowed, positions.to(device), self.slots.cache)
        last = torch.tensor([max(len(r.pending) - 1, 0) for r in rows], device=device)
        logits = sm.lm_logits(hidden[torch.arange(size, device=device), last]).float()

        checking = [i for i, c in enumerate(checks) if c is not None]
        verdicts = dict(zip(checking, self._verdicts(hidden[checking, width - 1]) if checking else []))
        for i, row in enumerate(rows):
            row.pending, row.pending_injection = [], False
            if i in verdicts:
                self.slots.latest_cls[i] = self.slots.length - 1
                probability, error = verdicts[i]
                action = row.safety.verdict(checks[i], probability, error, row.frontier, len(row.response),
                                            lambda s, row=row: self._own_refusal(row, s))
                if action is not None:
                    self._inject(row, action)
                    continue  # the refusal is fed next step
            if row.ending is not None:
                self._end(row, row.ending)
            else:
                self._take(row, logits[i])
        self._after_step()
        return True

    @staticmethod
    def _append(row: _Row, token: int) -> int:
        """Add a fed token to the row's response at the row's next position; its response index."""
        row.response.append(token)
        index = len(row.response)
        row.position_of[index] = row.position
        row.position += 1
        return index

    def _after_step(self) -> None:
        """Move the release frontiers, let finished rows leave, drop dead cache columns."""
        for row in self.active:
            holds_from = None if row.done else row.safety.holds_from
            row.frontier = max(row.frontier, release_frontier(len(row.response), holds_from))
        staying = [i for i, r in enumerate(self.active) if not r.done]
        if len(staying) < len(self.active) and staying:
            self.slots.keep_rows(staying)
        self.active = [self.active[i] for i in staying]
        if self.active:
            self.slots.compact()

    # ------------------------------------------------------------------ tokens, endings, injection
    def _take(self, row: _Row, logits: torch.Tensor) -> None:
        """Choose the next token. EOS ends the row at once; the budget's last token, or one
        completing a stop string, is still fed (and checked on its step) before the row ends."""
        forced = row.sampler.forcing
        token = row.sampler.choose(logits, row.prompt_ids + row.response)
        if token in self.eos_ids and not (row.request.ignore_eos or forced):
            self._end(row, "eos")
            return
        row.generated += 1
        row.pending = [token]
        if row.generated >= row.budget:
            ran_out = forced and row.generated == len(row.request.forced_response_ids)
            row.ending = "refusal_length" if row.result.intervened else "forced_end" if ran_out else "length"
        elif self._hits_stop(row, token):
            row.ending = "stop"

    def _end(self, row: _Row, reason: str) -> None:
        row.ending = None
        action = row.safety.at_end(lambda s: self._own_refusal(row, s))
        if action is not None:  # a pending confirmation, decided malicious by its latest verdict
            self._inject(row, action)
            return
        row.done, row.result.finish_reason = True, reason

    def _hits_stop(self, row: _Row, token: int) -> bool:
        if not row.request.stop:
            return False
        tail = self._decode((row.response + [token])[-32:])
        return any(s in tail for s in row.request.stop)

    def _inject(self, row: _Row, action: Inject) -> None:
        if action.rollback_to is not None and action.rollback_to <= len(row.response):  # (only in a step)
            self.slots.kill_from(self.active.index(row), action.rollback_to)
            row.position = row.position_of[action.rollback_to]
            del row.response[action.rollback_to - 1 :]
        policy = row.request.policy
        text = self._decode(row.response) if row.response else ""
        separator = policy.injection_separator if text and not text.endswith("\n") else ""
        injected = self.tokenizer(separator + policy.refusal_prefix, add_special_tokens=False)["input_ids"]
        result = row.result
        result.intervened = True
        result.intervention_index = len(row.response)
        result.tokens_before_intervention = len(row.response) - row.prefill_length
        result.error = row.safety.error
        row.pending, row.pending_injection, row.ending = injected, True, None
        row.sampler.stop_forcing()
        row.generated = 0
        row.budget = policy.refusal_max_new_tokens or row.request.max_new_tokens

    def _own_refusal(self, row: _Row, token: int) -> bool:
        """Whether every response token from `token` to the newest lies in a refusal the model
        wrote itself."""
        return own_refusal(self._decode, row.response, row.prefill_length, row.request.policy, token)

    # ------------------------------------------------------------------ plumbing
    def _verdicts(self, cls_hidden: torch.Tensor) -> list[tuple[float, str | None]]:
        """(P(malicious), error) per row. A head that raises on several rows is retried row by
        row, so a check that fails for one row fails that row only."""
        try:
            return [(p, None) for p in torch.sigmoid(self.sm.cls_logits(cls_hidden).float()).reshape(-1).tolist()]
        except Exception as err:  # fail closed: a broken check refuses
            if cls_hidden.shape[0] == 1:
                return [(math.nan, f"safety check raised {type(err).__name__}: {err}")]
            return [self._verdicts(cls_hidden[i : i + 1])[0] for i in range(cls_hidden.shape[0])]

    def _forward(self, ids: torch.Tensor, allowed: torch.Tensor, positions: torch.Tensor, cache,
                 inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        self.model_calls += 1
        mask = to_additive(allowed, attention_dtype(self.sm))
        return self.sm.hidden_states(ids, mask, positions, cache=cache, inputs_embeds=inputs_embeds)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _finish(self, row: _Row) -> GenerationResult:
        result = row.result
        result.token_ids = list(row.response)
        result.text = self._decode(row.response)
        result.events = row.safety.events
        return result

    def _check_sliding_window(self, requests: list[Request], examples) -> None:
        config = self.sm.base.config.get_text_config()
        window = getattr(config, "sliding_window", None)
        if not window or not getattr(config, "use_sliding_window", True):
            return
        # Our DynamicCache keeps its slots, but the model's own mask would still cut keys
        # further back than its window. Bound the slots: the prefill pass (prompt, prefill,
        # two [CLS]), up to two per step (token + check) over both budgets and the last
        # token's step, and each row's injection, fed in one step of its own width.
        steps = max(q.max_new_tokens + 1 + (q.policy.refusal_max_new_tokens or q.max_new_tokens) + 1 for q in requests)
        injections = sum(
            len(self.tokenizer(q.policy.injection_separator + q.policy.refusal_prefix, add_special_tokens=False)
                ["input_ids"]) for q in requests
        )
        needed = max(len(e.input_ids) for e in examples) + 2 + 2 * steps + injections
        if needed > window:
            raise ValueError(
                f"sliding_window {window} of this model is shorter than the decode sequence (up to {needed} "
                "cache slots: prompt and prefill, [CLS] checks, both budgets, the refusal); lower "
                "max_new_tokens or refusal_max_new_tokens"
            )


def attention_dtype(sm) -> torch.dtype:
    """The dtype attention runs in: autocast's where it is on, else the hidden states'."""
    device_type = sm.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return sm.base.get_input_embeddings().weight.dtype
