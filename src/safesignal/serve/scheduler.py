"""Continuous batching: one decode loop, on a thread of its own, serves every request in flight.

Requests wait in a bounded queue. At each step boundary the loop takes as many as fit (free
rows, and a prompt-token budget so a burst of arrivals does not stall the running rows for
long), runs their prefill pass as one batched forward and merges them into the running batch;
then one forward decodes every row. Finished rows leave at once, a cancelled one (its client
left) at the next boundary. What each row releases goes to its request's asyncio queue.

A failure stays with its request: a prompt the model cannot take fails that request alone
(the others in its join are retried without it), a safety check that raises refuses its row
(the decoder fails closed), and only an error in the shared forward fails the rows it carried.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from jinja2 import TemplateError

from ..decoding import RowOutput, StrategicDecoder
from ..decoding.engine import PromptHead
from ..formatting import EncodedExample
from .config import ServeConfig
from .protocol import ApiError, ChatRequest

log = logging.getLogger("safesignal.serve")


@dataclass
class Ticket:
    """One request's place in the scheduler; its `queue` receives ("started", prompt_tokens),
    then ("output", RowOutput) items, or ("error", ApiError)."""

    chat: ChatRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    id: str = field(default_factory=lambda: "chatcmpl-" + uuid.uuid4().hex[:24])
    created: float = field(default_factory=time.time)
    row_id: int | None = None
    example: EncodedExample | None = None  # the prompt as encoded once, on admission
    prompt_tokens: int = 0
    cancelled: bool = False  # the client left
    finished: bool = False  # its answer (or error) reached the handler: nothing left to cancel

    def send(self, kind: str, value) -> None:
        _post(self.loop, [(self.queue, (kind, value))])


def _post(loop: asyncio.AbstractEventLoop, items: list) -> None:
    """Put each (queue, item) on its asyncio queue from the decode thread, in one call on the loop."""
    try:
        loop.call_soon_threadsafe(_deliver, items)
    except RuntimeError:  # the event loop closed (shutdown): nobody is listening
        pass


def _deliver(items: list) -> None:
    for queue, item in items:
        queue.put_nowait(item)


class Scheduler:
    def __init__(self, model, config: ServeConfig):
        self.model, self.config = model, config
        self.decoder = StrategicDecoder(model)
        self._forwards_before = self._steps_before = 0  # of decoders replaced after a failure
        self._waiting: collections.deque[Ticket] = collections.deque()
        self._cancels: list[Ticket] = []
        self._running: dict[int, Ticket] = {}
        self._head: tuple[Ticket, PromptHead] | None = None  # a long prompt being prefilled in chunks
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.counts = collections.Counter()
        self.recent_forwards: collections.deque[dict] = collections.deque(maxlen=256)
        self.max_requests_in_forward = 0
        self.shared_step_forwards = 0  # decode forwards that carried rows of two or more requests
        self._forward_serial = itertools.count()

    # ------------------------------------------------------------------ called from the event loop
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="safesignal-decode", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, chat: ChatRequest, loop: asyncio.AbstractEventLoop) -> Ticket:
        """Queue a request; 429 when the queue is full, 503 while shutting down."""
        ticket = Ticket(chat, loop, asyncio.Queue())
        with self._wake:
            if self._stopping:
                raise ApiError(503, "the server is shutting down", kind="server_error")
            if len(self._waiting) >= self.config.max_queued:
                self.counts["rejected_queue_full"] += 1
                raise ApiError(429, f"the server is busy ({len(self._waiting)} requests waiting); retry later",
                               kind="rate_limit_error", code="queue_full",
                               headers={"Retry-After": str(self.config.retry_after_s)})
            self._waiting.append(ticket)
            self.counts["accepted"] += 1
            self._wake.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """The client left: free its row at the next step boundary (or drop it from the queue)."""
        with self._wake:
            if ticket.cancelled:
                return
            ticket.cancelled = True
            if ticket in self._waiting:
                self._waiting.remove(ticket)
                self.counts["cancelled"] += 1
            else:
                self._cancels.append(ticket)
                self._wake.notify()

    def metrics(self, recent: int = 32) -> dict:
        """Counters, and the last `recent` forwards (up to 256) with the requests each carried."""
        with self._wake:
            return {
                "active_rows": len(self._running),
                "queued": len(self._waiting),
                "max_batch_rows": self.config.max_batch_rows,
                "max_queued": self.config.max_queued,
                "forwards": self._forwards_before + self.decoder.model_calls,
                "decode_steps": self._steps_before + self.decoder.steps,
                "max_requests_in_forward": self.max_requests_in_forward,
                "shared_step_forwards": self.shared_step_forwards,
                "recent_forwards": list(self.recent_forwards)[-recent:] if recent > 0 else [],
                **{f"requests_{k}": v for k, v in sorted(self.counts.items())},
            }

    # ------------------------------------------------------------------ the decode thread
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self._waiting or self._cancels or self._running or self._head):
                    self._wake.wait()
                if self._stopping:
                    break
                cancels, self._cancels = self._cancels, []
                admitted = self._admit() if self._head is None else []
            try:
                self._cancel_rows(cancels)
                admitted = self._within_budget(admitted)
                if admitted:
                    self._join(admitted)
                elif self._head is not None:
                    self._advance_head()
                if self.decoder.active:
                    carried = [self._running[row.id] for row in self.decoder.active]
                    forwards = self.decoder.model_calls
                    self.decoder.step()
                    if self.decoder.model_calls > forwards:  # (a step where every row only ends runs none)
                        self._record("step", carried)
                    self._publish()
            except Exception as err:  # an error in the shared forward: fail the rows it carried
                log.exception("decode loop failed")
                self._fail([t for t in admitted if t.row_id is None], err)  # taken, never joined
                self._fail_running(err)
        shutdown = RuntimeError("the server shut down")
        with self._wake:
            waiting, self._waiting = list(self._waiting), collections.deque()
        self._fail(waiting + ([self._head[0]] if self._head else []), shutdown, status=503)
        self._fail_running(shutdown, status=503)

    @property
    def alive(self) -> bool:
        """Whether the decode thread runs (health reports it)."""
        return self._thread is not None and self._thread.is_alive()

    def _admit(self) -> list[Ticket]:
        """Up to the free rows' worth of waiting tickets (the caller keeps those within budget)."""
        free = self.config.max_batch_rows - len(self._running)
        return [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]

    def _within_budget(self, tickets: list[Ticket]) -> list[Ticket]:
        """The tickets whose prompts fit this join's prefill token budget (always the first: a
        long prompt still gets its turn); the rest go back to the front of the queue. Chunking
        the join keeps one burst of arrivals from stalling the running rows for its whole
        prefill: they take a step between chunks."""
        taken, spent = [], 0
        for k, ticket in enumerate(tickets):
            if ticket.cancelled:  # its client left between the queue and this join
                self.counts["cancelled"] += 1
                continue
            if ticket.example is None:
                try:
                    ticket.example = self._encoded(ticket)
                    ticket.prompt_tokens = len(ticket.example.input_ids)
                except Exception as err:  # the template or the limit refused it: this request alone
                    self._refuse(ticket, err)
                    continue
            over = spent + ticket.prompt_tokens > self.config.prefill_token_budget
            if over and not taken and self.decoder.active:
                # a prompt longer than the budget, with rows running: prefill it in chunks, a
                # decode step between chunks, and join it when the last chunk is in
                try:
                    self._head = (ticket, self.decoder.begin_head(ticket.chat.request,
                                                                  self.config.prefill_token_budget, ticket.example))
                except Exception as err:
                    self._refuse(ticket, err)
                    continue
                self._requeue(tickets[k + 1:])
                break
            if over and taken:
                self._requeue(tickets[k:])
                break
            taken.append(ticket)
            spent += ticket.prompt_tokens
        return taken

    def _requeue(self, tickets: list[Ticket]) -> None:
        """Back to the front of the queue, in order (they were taken from there)."""
        with self._wake:
            self._waiting.extendleft(reversed([t for t in tickets if not t.cancelled]))

    def _advance_head(self) -> None:
        """One chunk of the long prompt in flight; when it is all in, its row joins."""
        ticket, head = self._head
        if ticket.cancelled:
            self._head = None
            self.counts["cancelled"] += 1
            return
        try:
            self._record("prefill_chunk", [ticket])
            self.decoder.advance_head(head)
            if head.done:
                self._head = None
                self._record("prefill", [ticket])
                (row_id,) = self.decoder.join_head(head)
                ticket.row_id = row_id
                self._running[row_id] = ticket
                ticket.send("started", ticket.prompt_tokens)
                self._publish()
        except Exception as err:  # this request's prefill failed: it fails alone
            self._head = None
            self._refuse(ticket, err)

    def _cancel_rows(self, cancels: list[Ticket]) -> None:
        for ticket in cancels:
            if ticket.row_id is not None and self._running.get(ticket.row_id) is ticket:
                self.decoder.cancel(ticket.row_id)
        if cancels:
            self._publish()

    def _join(self, tickets: list[Ticket]) -> None:
        """The prefill pass of `tickets` as one forward; a request the model cannot take fails alone."""
        try:
            self._join_rows(tickets)
        except Exception as err:
            if len(tickets) == 1:
                self._refuse(tickets[0], err)
                return
            for ticket in tickets:  # one by one: the request that failed fails alone
                self._join([ticket])

    def _join_rows(self, tickets: list[Ticket]) -> None:
        requests = [t.chat.request for t in tickets]
        self._record("prefill", tickets)
        ids = self.decoder.join(requests, [t.example for t in tickets])  # (never `start`: row ids keep counting up)
        for ticket, row_id in zip(tickets, ids):
            ticket.row_id = row_id
            self._running[row_id] = ticket
            ticket.send("started", ticket.prompt_tokens)
        self._publish()

    def _encoded(self, ticket: Ticket) -> EncodedExample:
        """The request's prompt, encoded once for both the budget and the prefill pass."""
        example = self.decoder.encode(ticket.chat.request)
        n = len(example.input_ids)
        if n > self.config.max_prompt_tokens:
            raise ApiError(400, f"messages: the conversation is {n} tokens, over the limit of "
                                f"{self.config.max_prompt_tokens}", param="messages", code="context_length_exceeded")
        return example

    def _publish(self) -> None:
        """Hand every running row's news to its request (one wake-up of the event loop per step,
        not one per row); finished rows leave the books."""
        news: dict[asyncio.AbstractEventLoop, list] = {}
        for row_id, ticket in list(self._running.items()):
            output: RowOutput = self.decoder.output(row_id)
            if output.delta or output.events or output.done:
                news.setdefault(ticket.loop, []).append((ticket.queue, ("output", output)))
            if output.done:
                self.decoder.forget(row_id)
                del self._running[row_id]
                self.counts["cancelled" if output.result.finish_reason == "cancelled" else "completed"] += 1
        for loop, items in news.items():
            _post(loop, items)

    def _record(self, kind: str, tickets: list[Ticket]) -> None:
        requests = sorted({t.id for t in tickets})
        with self._wake:
            self.recent_forwards.append({"forward": next(self._forward_serial), "kind": kind,
                                         "rows": len(tickets), "requests": requests})
            self.max_requests_in_forward = max(self.max_requests_in_forward, len(requests))
            if kind == "step" and len(requests) > 1:
                self.shared_step_forwards += 1

    def _refuse(self, ticket: Ticket, err: Exception) -> None:
        """One request the model cannot take: a 400 when its content is at fault (the limit, the
        chat template, the model's window), else a 500; nothing else is touched."""
        if isinstance(err, ApiError):
            self.counts["rejected_invalid"] += 1
            ticket.send("error", err)
        elif isinstance(err, (ValueError, TemplateError)):
            self.counts["rejected_invalid"] += 1
            ticket.send("error", ApiError(400, f"messages: {err}", param="messages"))
        else:
            log.exception("prefill failed")
            self._fail([ticket], err)

    def _fail(self, tickets: list[Ticket], err: Exception, status: int = 500) -> None:
        for ticket in tickets:
            self.counts["failed"] += 1
            ticket.send("error", ApiError(status, f"decoding failed: {type(err).__name__}: {err}", kind="server_error"))

    def _fail_running(self, err: Exception, status: int = 500) -> None:
        self._fail(list(self._running.values()), err, status)
        self._running.clear()
        self._forwards_before += self.decoder.model_calls
        self._steps_before += self.decoder.steps
        self.decoder = StrategicDecoder(self.model)  # a fresh batch: nothing of the failed one is reused
