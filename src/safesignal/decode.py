"""Strategic decoding: our own batched decode loop over the KV cache (DESIGN.md §Decoding).

One forward per step for the whole batch. Each row feeds its newest token(s) and, in the same
forward, a `[CLS]` query row: a live check over the row's current window, or a dead filler.
Nothing is ever removed from the cache; per-slot metadata (kind, live, response index, query)
and a 4-D mask decide who reads what:

- ordinary tokens read every live ordinary token before them and, with strategic attention,
  the row's latest `[CLS]` state (refreshed by the newest check, read from the next step on);
- a check reads the query (optionally) plus its window of live response tokens;
- dead slots (fillers, rolled-back tokens, pads) are read by nobody but themselves.

The state machine per row: benign → re-check on the schedule (Rule 2); a malicious verdict at
step S starts a confirmation (every step, Rule 3); τ consecutive malicious verdicts roll the
row back to S (its slots from S on go dead, its position counter returns) and inject the
refusal prefix, after which checks stop; a benign verdict clears S. Without injection (the
attention-only ablation) checks go on (Rule 1 if initially malicious, Rule 3 after a
transition). A check that raises or gives a non-finite value refuses the request (fail closed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from .batching import collate
from .masks import sft_allowed, to_additive
from .policy import SafetyPolicy

DEAD, TOKEN, CLS = 0, 1, 2


@dataclass
class Sampling:
    """Decoding parameters (greedy unless do_sample)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise ValueError("top_k must be ≥ 0 and repetition_penalty > 0")


@dataclass
class SafetyEvent:
    """One check: generation step (0 = after the prefill pass), P(malicious), label, window."""

    step: int
    probability: float
    label: str
    window: tuple[int, int] | None  # response-token indices (1-based), None = query only
    rule: str


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
    error: str | None = None


@dataclass
class StreamChunk:
    """What one step released, per row: text delta, new safety events, whether the row is done."""

    deltas: list[str]
    events: list[list[SafetyEvent]]
    done: list[bool]
    results: list[GenerationResult] | None = None


@dataclass
class StreamDelta:
    """One streamed piece for a single conversation (`SafetyModel.stream`)."""

    text: str
    events: list[SafetyEvent]
    done: bool = False
    result: GenerationResult | None = None


@dataclass
class _Row:
    """Per-row decoding state."""

    prompt_ids: list[int]
    prefill_len: int
    response: list[int]  # response token ids kept so far (prefill first)
    position: int  # position id of the next fed token
    budget: int
    state: str = "benign"  # benign | confirming | initial_malicious | tracking | injected | done
    transition: int | None = None  # response index of the token that started a confirmation
    consecutive: int = 0
    last_malicious: bool = False
    generated: int = 0  # model-generated tokens fed or pending, since the last injection
    pending: list[int] = field(default_factory=list)
    pending_is_injection: bool = False
    position_of: dict[int, int] = field(default_factory=dict)  # response index -> position id
    result: GenerationResult | None = None
    generator: torch.Generator | None = None  # per row: a sampled batch equals its rows run alone
    emitted: str = ""  # text already streamed
    events_sent: int = 0

    @property
    def checking(self) -> bool:
        return self.state not in ("injected", "done")


class StrategicDecoder:
    """Runs strategic decoding for a batch of prompts on a SafetyModel."""

    def __init__(self, model, policy: SafetyPolicy, sampling: Sampling | None = None):
        self.sm = model
        self.policy = policy
        self.sampling = sampling or Sampling()
        self.tokenizer = model.tokenizer
        self.model_calls = 0  # forwards issued: 1 prefill pass + 1 per step, whatever the batch size
        self.steps = 0
        eos = {self.tokenizer.eos_token_id}
        config_eos = getattr(model.base.generation_config, "eos_token_id", None)
        eos |= set(config_eos) if isinstance(config_eos, (list, tuple)) else {config_eos}
        self.eos_ids = {e for e in eos if e is not None}

    # ------------------------------------------------------------------ public
    def generate(self, conversations: list[list[dict]], **kwargs) -> list[GenerationResult]:
        """Run to completion; see `stream` for the arguments."""
        *_, rows = self._run(conversations, **kwargs)  # drive the loop to its end
        return [self._finish(r) for r in rows]

    def stream(self, conversations: list[list[dict]], **kwargs):
        """Yield a `StreamChunk` after the prefill pass and after every step.

        Arguments: max_new_tokens, prefills (one per conversation or None), stop strings,
        ignore_eos. A token is released only once the verdict of its step is known and never
        while a confirmation is pending, so a rollback never retracts released text. The
        deltas of a row concatenate to its final `text`; the last chunk carries the results.
        """
        rows = None
        for rows in self._run(conversations, **kwargs):
            yield self._chunk(rows)
        chunk = self._chunk(rows)
        chunk.results = [self._finish(r) for r in rows]
        yield chunk

    def _run(
        self,
        conversations: list[list[dict]],
        *,
        max_new_tokens: int = 256,
        prefills: list[str | None] | None = None,
        stop: list[str] | None = None,
        ignore_eos: bool = False,
    ):
        """The decode loop: yields the rows after the prefill pass and after every step."""
        prefills = prefills or [None] * len(conversations)
        if len(prefills) != len(conversations):
            raise ValueError("prefills: need one entry (or None) per conversation")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be ≥ 1, got {max_new_tokens}")
        self._check_sliding_window(conversations, max_new_tokens)
        self.stop = list(stop or [])
        self.max_new_tokens = max_new_tokens
        self.ignore_eos = ignore_eos  # fixed-length runs (benchmarks)
        with torch.inference_mode():
            rows, logits = self._prefill(conversations, prefills, max_new_tokens)
            for row, row_logits in zip(rows, logits):
                if row.state != "injected":
                    self._accept_token(row, row_logits)
        yield rows
        while any(r.state != "done" for r in rows):
            with torch.inference_mode():
                self._step(rows)
            self.steps += 1
            yield rows

    def _chunk(self, rows: list[_Row]) -> "StreamChunk":
        deltas, events = [], []
        for row in rows:
            releasable = row.transition - 1 if row.state == "confirming" else len(row.response)
            text = self.tokenizer.decode(row.response[:releasable], skip_special_tokens=True)
            if row.state != "done" and text.endswith("\ufffd"):
                text = text[:-1]  # an incomplete UTF-8 sequence: wait for its next token
            # Released text only grows: the token at S is held from its own step, and a
            # rollback drops only tokens from S on.
            deltas.append(text[len(row.emitted) :] if text.startswith(row.emitted) else "")
            row.emitted = text if text.startswith(row.emitted) else row.emitted
            events.append(row.result.events[row.events_sent :])
            row.events_sent = len(row.result.events)
        return StreamChunk(deltas, events, [r.state == "done" for r in rows])

    # ------------------------------------------------------------------ prefill pass
    def _prefill(self, conversations, prefills, max_new_tokens):
        sm, policy = self.sm, self.policy
        examples = [
            sm.formatter.encode(messages, prefill or "", add_eos=False)
            for messages, prefill in zip(conversations, prefills)
        ]
        batch = collate(examples, cls_token_id=sm.cls_token_id, pad_token_id=self.tokenizer.pad_token_id,
                        with_labels=False)
        batch = {k: (v.to(sm.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        size, length = batch["input_ids"].shape
        has_prefill = [e.response_length > 0 for e in examples]
        # A second [CLS] slot over query + the last r2 prefill tokens gives the first verdict
        # where there is a prefill; other rows carry a dead slot in that column.
        if any(has_prefill):
            column = torch.full((size, 1), sm.cls_token_id, device=sm.device)
            batch["input_ids"] = torch.cat([batch["input_ids"], column], dim=1)
            batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.ones_like(column)], dim=1)
            for key in ("query_mask", "window_mask"):
                batch[key] = torch.cat([batch[key], torch.zeros_like(column, dtype=torch.bool)], dim=1)
            length += 1
        slot_b = torch.full((size,), length - 1 if any(has_prefill) else -1, device=sm.device)
        window_mask = batch["window_mask"]
        window_end = torch.full((size,), length, device=sm.device)
        start = [length - (1 if any(has_prefill) else 0) - len(e.input_ids) for e in examples]
        for i, e in enumerate(examples):
            if has_prefill[i]:
                first = max(e.prompt_length, len(e.input_ids) - policy.r2)
                window_mask[i, start[i] + first : start[i] + len(e.input_ids)] = True
                window_end[i] = start[i] + len(e.input_ids) - 1
        reader_start = batch["reader_start"] if policy.strategic_attention else torch.full_like(slot_b, length)
        allowed = sft_allowed(batch["attention_mask"], batch["query_mask"], batch["slot_a"], reader_start,
                              slot_b, window_mask, window_end)
        if not policy.window_includes_query and any(has_prefill):
            allowed[:, -1, :] &= ~batch["query_mask"]
        positions = torch.zeros((size, length), dtype=torch.long, device=sm.device)
        for i, e in enumerate(examples):
            positions[i, start[i] : start[i] + len(e.input_ids)] = torch.arange(1, len(e.input_ids) + 1)

        self.cache = DynamicCache()
        hidden = self._forward(batch["input_ids"], allowed, positions)
        last_token = length - 1 - (1 if any(has_prefill) else 0)
        logits = self.sm.lm_logits(hidden[:, last_token]).float()

        # Slot metadata for everything now in the cache.
        ids = batch["input_ids"]
        self.kind = torch.where(batch["attention_mask"].bool(), TOKEN, DEAD).to(torch.int8)
        self.kind[ids == sm.cls_token_id] = CLS
        self.live = self.kind == TOKEN
        self.query = batch["query_mask"].clone()
        self.resp = torch.zeros((size, length), dtype=torch.long, device=sm.device)
        self.current_cls = batch["slot_a"].clone()
        rows = []
        for i, e in enumerate(examples):
            n_resp = e.response_length
            if n_resp:
                self.resp[i, start[i] + e.prompt_length : start[i] + len(e.input_ids)] = torch.arange(1, n_resp + 1)
                self.current_cls[i] = length - 1
            elif any(has_prefill):
                self.kind[i, -1] = DEAD
            row = _Row(
                prompt_ids=e.input_ids[: e.prompt_length],
                prefill_len=n_resp,
                response=list(e.input_ids[e.prompt_length :]),
                position=len(e.input_ids) + 1,
                budget=max_new_tokens,
                result=GenerationResult(text="", token_ids=[], prefill=prefills[i] or ""),
            )
            if self.sampling.seed is not None:
                row.generator = torch.Generator(device=sm.device).manual_seed(self.sampling.seed)
            row.position_of = {k + 1: e.prompt_length + k + 1 for k in range(n_resp)}
            rows.append(row)

        self._rows_index = {id(row): i for i, row in enumerate(rows)}
        cls_rows = torch.where(torch.tensor(has_prefill, device=sm.device), slot_b, batch["slot_a"])
        window = [(max(1, e.response_length - policy.r2 + 1), e.response_length) if has_prefill[i] else None
                  for i, e in enumerate(examples)]
        probabilities, error = self._verdicts(hidden[torch.arange(size), cls_rows])
        for i, row in enumerate(rows):
            self._first_verdict(row, probabilities[i], window[i], error)
        return rows, logits

    def _first_verdict(self, row: _Row, probability: float, window, error: str | None) -> None:
        malicious = self._record(row, 0, probability, window, "prefill" if window else "query", error)
        if not malicious:
            return
        if self.policy.strategic_decoding:
            self._inject(row)
        else:
            row.state = "initial_malicious"

    # ------------------------------------------------------------------ one decode step
    def _step(self, rows: list[_Row]) -> None:
        sm = self.sm
        size = len(rows)
        checks = [self._check_window(r) for r in rows]  # None for done and injected rows
        feeds = [r.pending if r.state != "done" else [] for r in rows]
        # A step where no row checks carries no [CLS] column at all (annealing's later steps).
        any_check = any(c is not None for c in checks)
        width = max(len(f) for f in feeds) + any_check
        past = self.kind.shape[1]

        ids = torch.full((size, width), self.tokenizer.pad_token_id, dtype=torch.long)
        kind = torch.full((size, width), DEAD, dtype=torch.int8)
        resp = torch.zeros((size, width), dtype=torch.long)
        positions = torch.zeros((size, width), dtype=torch.long)
        for i, (row, feed) in enumerate(zip(rows, feeds)):
            for k, token in enumerate(feed):
                index = len(row.response) + 1
                row.response.append(token)
                row.position_of[index] = row.position
                ids[i, k], kind[i, k], resp[i, k], positions[i, k] = token, TOKEN, index, row.position
                row.position += 1
            if any_check:
                ids[i, width - 1] = sm.cls_token_id
            if checks[i] is not None:
                kind[i, width - 1] = CLS
        device = sm.device
        ids, kind, resp, positions = ids.to(device), kind.to(device), resp.to(device), positions.to(device)
        self.kind = torch.cat([self.kind, kind], dim=1)
        self.live = torch.cat([self.live, kind == TOKEN], dim=1)
        self.resp = torch.cat([self.resp, resp], dim=1)
        self.query = torch.cat([self.query, torch.zeros_like(kind, dtype=torch.bool)], dim=1)

        allowed = self._step_mask(rows, checks, past, width)
        hidden = self._forward(ids, allowed, positions)
        last = torch.tensor([max(len(f) - 1, 0) for f in feeds], device=device)
        logits = sm.lm_logits(hidden[torch.arange(size, device=device), last]).float()

        checking = [i for i in range(size) if checks[i] is not None]
        probabilities, error = (self._verdicts(hidden[checking, width - 1]) if checking else ([], None))
        verdicts = dict(zip(checking, probabilities))
        for i, row in enumerate(rows):
            if row.state == "done":
                continue
            row.pending, row.pending_is_injection = [], False
            if i in verdicts:
                self.current_cls[i] = past + width - 1
                window, rule, step = checks[i]
                if self._apply_verdict(row, step, verdicts[i], window, rule, error):
                    continue  # rolled back and injected: the refusal is fed next step
            self._accept_token(row, logits[i])

    def _check_window(self, row: _Row):
        """(window, rule, step) if this row checks at this step, else None."""
        if not row.checking or not row.pending:
            return None
        policy = self.policy
        step = row.generated
        newest = len(row.response) + 1  # response index of the token fed now
        if row.state == "confirming":
            lo = max(1, row.transition - policy.r2)
            return (lo, min(newest, row.transition + policy.r3)), "rule3", step
        if not policy.checks_at(step):
            return None
        if row.state == "initial_malicious":
            return (1, min(newest, policy.r1)), "rule1", step
        if row.state == "tracking":
            lo = max(1, row.transition - policy.r2)
            return (lo, min(newest, row.transition + policy.r3)), "rule3", step
        return (max(1, newest - policy.r2 + 1), newest), "rule2", step

    def _step_mask(self, rows, checks, past: int, width: int) -> torch.Tensor:
        """(B, W, past + W) boolean mask for the rows fed this step."""
        total = past + width
        device = self.kind.device
        keys = torch.arange(total, device=device)
        query_index = past + torch.arange(width, device=device)
        token_key = (self.kind == TOKEN) & self.live  # (B, K)
        is_token_row = self.kind[:, past:] == TOKEN  # (B, W)
        causal = keys[None, None, :] <= query_index[None, :, None]
        allowed = is_token_row[:, :, None] & token_key[:, None, :] & causal
        if self.policy.strategic_attention:
            reads_cls = keys[None, :] == self.current_cls[:, None]  # (B, K)
            allowed |= is_token_row[:, :, None] & reads_cls[:, None, :]
        for i, check in enumerate(checks):
            if check is None:
                continue
            (lo, hi), _, _ = check
            window = token_key[i] & (self.resp[i] >= lo) & (self.resp[i] <= hi)
            if self.policy.window_includes_query:
                window |= self.query[i]
            allowed[i, width - 1] |= window
        allowed |= keys[None, None, :] == query_index[None, :, None]  # every row reads itself
        return allowed

    # ------------------------------------------------------------------ verdicts and state
    def _verdicts(self, cls_hidden: torch.Tensor) -> tuple[list[float], str | None]:
        try:
            probabilities = torch.sigmoid(self.sm.cls_logits(cls_hidden).float()).tolist()
        except Exception as err:  # fail closed: a broken check refuses
            return [math.nan] * cls_hidden.shape[0], f"safety check raised {type(err).__name__}: {err}"
        return probabilities, None

    def _record(self, row: _Row, step: int, probability: float, window, rule: str, error: str | None) -> bool:
        """Log one verdict; True when it counts as malicious (non-finite values fail closed)."""
        finite = math.isfinite(probability)
        malicious = (not finite) or probability > self.policy.threshold
        row.result.events.append(
            SafetyEvent(step, probability, "malicious" if malicious else "benign", window, rule)
        )
        if not finite:
            row.result.error = error or f"safety check returned a non-finite value at step {step}"
        return malicious

    def _apply_verdict(self, row: _Row, step: int, probability: float, window, rule: str, error) -> bool:
        """Update the state machine; True when the row was rolled back and injected."""
        malicious = self._record(row, step, probability, window, rule, error)
        row.last_malicious = malicious
        newest = len(row.response)
        if row.result.error is not None and self.policy.strategic_decoding:
            self._rollback(row, row.prefill_len + 1)  # fail closed: refuse the whole request
            self._inject(row)
            return True
        if not malicious:
            if row.state in ("confirming", "tracking"):
                row.state, row.transition, row.consecutive = "benign", None, 0
            return False
        if row.state == "benign":
            row.state, row.transition, row.consecutive = "confirming", newest, 0
        if row.state == "confirming":
            row.consecutive += 1
            if row.consecutive >= self.policy.tau:
                if self.policy.strategic_decoding:
                    self._rollback(row, row.transition)
                    self._inject(row)
                    return True
                row.state = "tracking"
        return False

    def _rollback(self, row: _Row, response_index: int) -> None:
        """Kill the row's slots from `response_index` on; its position counter returns there."""
        i = self._row_index(row)
        self.live[i] &= ~(self.resp[i] >= response_index)
        row.position = row.position_of[response_index]
        del row.response[response_index - 1 :]

    def _inject(self, row: _Row) -> None:
        policy = self.policy
        text_so_far = self.tokenizer.decode(row.response, skip_special_tokens=True) if row.response else ""
        separator = policy.injection_separator if text_so_far and not text_so_far.endswith("\n") else ""
        injected = self.tokenizer(separator + policy.refusal_prefix, add_special_tokens=False)["input_ids"]
        result = row.result
        result.intervened = True
        result.intervention_index = len(row.response)
        result.tokens_before_intervention = len(row.response) - row.prefill_len
        row.state, row.pending, row.pending_is_injection = "injected", injected, True
        row.generated = 0
        row.budget = policy.refusal_max_new_tokens or self.max_new_tokens

    def _accept_token(self, row: _Row, logits: torch.Tensor) -> None:
        """Pick the next token; finish (or resolve a pending confirmation) at EOS / budget / stop.

        A token that ends the row (the budget's last, or one completing a stop string) joins
        the response without being fed: no step, so no check, follows it.
        """
        token = self._sample(row, logits)
        if token in self.eos_ids and not self.ignore_eos:
            reason = "eos"
        else:
            row.generated += 1
            if row.generated < row.budget and not (self.stop and self._hits_stop(row, token)):
                row.pending = [token]
                return
            reason = "length" if row.generated >= row.budget else "stop"
            row.response.append(token)
        if row.state == "confirming" and row.last_malicious and self.policy.strategic_decoding:
            # EOS or the budget came mid-confirmation: the latest verdict decides at once.
            self._rollback(row, row.transition)
            self._inject(row)
            return
        if row.state == "injected" and reason == "length":
            reason = "refusal_length"
        row.state, row.result.finish_reason = "done", reason

    def _hits_stop(self, row: _Row, token: int) -> bool:
        tail = self.tokenizer.decode((row.response + [token])[-32:], skip_special_tokens=True)
        return any(s in tail for s in self.stop)

    def _sample(self, row: _Row, logits: torch.Tensor) -> int:
        s = self.sampling
        scores = logits.clone()
        if s.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(row.prompt_ids + row.response)), device=scores.device)
            values = scores[seen]
            scores[seen] = torch.where(values > 0, values / s.repetition_penalty, values * s.repetition_penalty)
        if not s.do_sample:
            return int(scores.argmax())
        scores = scores / s.temperature
        if s.top_k:
            kth = torch.topk(scores, min(s.top_k, scores.numel())).values[-1]
            scores = scores.masked_fill(scores < kth, -math.inf)
        if s.top_p < 1.0:
            ordered, order = torch.sort(scores, descending=True)
            cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
            drop = cumulative - torch.softmax(ordered, dim=-1) >= s.top_p  # keep the token that crosses p
            scores[order[drop]] = -math.inf
        probabilities = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=row.generator))

    # ------------------------------------------------------------------ plumbing
    def _forward(self, ids: torch.Tensor, allowed: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.model_calls += 1
        mask = to_additive(allowed, self.sm.dtype)
        return self.sm.hidden_states(ids, mask, positions, cache=self.cache)

    def _row_index(self, row: _Row) -> int:
        return self._rows_index[id(row)]

    def _finish(self, row: _Row) -> GenerationResult:
        result = row.result
        result.token_ids = list(row.response)
        result.text = self.tokenizer.decode(row.response, skip_special_tokens=True)
        return result

    def _check_sliding_window(self, conversations, max_new_tokens: int) -> None:
        config = self.sm.base.config.get_text_config()
        window = getattr(config, "sliding_window", None)
        if window and getattr(config, "use_sliding_window", True):
            # Our DynamicCache keeps every slot, but the model's own mask would still cut keys
            # further back than its window; each step adds up to two slots.
            longest = max(len(self.sm.formatter.encode(m).input_ids) for m in conversations)
            needed = longest + 2 + 2 * max_new_tokens + 64
            if needed > window:
                raise ValueError(
                    f"sliding_window {window} of this model is shorter than the decode sequence "
                    f"(up to {needed} cache slots with [CLS] checks); lower max_new_tokens"
                )
