"""The naive baseline server of benchmarks/serve_load.py: the same app (limits, formats, logs),
but behind it one request at a time through plain Hugging Face `generate` with a streamer,
on the same weights and no safety head: what serving a model like ours costs without a
decode loop of its own.

    python benchmarks/naive_hf_server.py --model smollm2-cls --port 8001
"""

from __future__ import annotations

import argparse
import collections
import threading

import torch
import uvicorn
from transformers.generation.streamers import BaseStreamer

from safesignal.cpu_tuning import tune_glibc_malloc
from safesignal.decoding import GenerationResult, RowOutput
from safesignal.model import SafetyModel
from safesignal.serve import ServeConfig
from safesignal.serve.app import create_app
from safesignal.serve.protocol import ApiError
from safesignal.serve.scheduler import Ticket


class _TicketStreamer(BaseStreamer):
    """Hands each generated token's text to the ticket as it comes (prompt tokens skipped)."""

    def __init__(self, ticket: Ticket, tokenizer):
        self.ticket, self.tokenizer = ticket, tokenizer
        self.ids, self.sent, self.prompt_seen = [], "", False

    def put(self, value):
        if not self.prompt_seen:  # generate's first call carries the prompt
            self.prompt_seen = True
            return
        self.ids += value.reshape(-1).tolist()
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        delta, self.sent = text[len(self.sent):], text
        if delta:
            self.ticket.send("output", RowOutput(delta, [], False))

    def end(self):
        pass


class SequentialHFScheduler:
    """One request at a time: a lock around `generate`, the way a quick server wraps a model."""

    def __init__(self, sm: SafetyModel, config: ServeConfig):
        self.sm, self.config = sm, config
        self.waiting: collections.deque[Ticket] = collections.deque()
        self.wake = threading.Condition()
        self.stopping = False
        self.counts = collections.Counter()
        self.eos = sm.tokenizer.eos_token_id

    def start(self):
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: float = 10.0):
        with self.wake:
            self.stopping = True
            self.wake.notify()

    def submit(self, chat, loop) -> Ticket:
        import asyncio

        ticket = Ticket(chat, loop, asyncio.Queue())
        with self.wake:
            if len(self.waiting) >= self.config.max_queued:
                raise ApiError(429, "busy", kind="rate_limit_error", headers={"Retry-After": "1"})
            self.waiting.append(ticket)
            self.wake.notify()
        return ticket

    def cancel(self, ticket):
        ticket.cancelled = True

    def metrics(self, recent: int = 0) -> dict:
        return {"active_rows": 0, "queued": len(self.waiting), **self.counts}

    def _loop(self):
        while True:
            with self.wake:
                while not (self.waiting or self.stopping):
                    self.wake.wait()
                if self.stopping:
                    return
                ticket = self.waiting.popleft()
            if ticket.cancelled:
                continue
            self._generate(ticket)

    def _generate(self, ticket: Ticket):
        sm, request = self.sm, ticket.chat.request
        ids = sm.formatter.encode(ticket.chat.messages).input_ids
        ticket.prompt_tokens = len(ids)
        ticket.send("started", len(ids))
        streamer = _TicketStreamer(ticket, sm.tokenizer)
        sampling = request.sampling
        kwargs = dict(do_sample=sampling.do_sample, temperature=sampling.temperature, top_p=sampling.top_p) \
            if sampling.do_sample else dict(do_sample=False)
        with torch.inference_mode():
            out = sm.base.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                   max_new_tokens=request.max_new_tokens, streamer=streamer,
                                   pad_token_id=sm.tokenizer.pad_token_id, **kwargs)
        new = out[0, len(ids):].tolist()
        ended = bool(new) and new[-1] == self.eos
        tokens = new[:-1] if ended else new
        result = GenerationResult(text=streamer.sent, token_ids=tokens, finish_reason="eos" if ended else "length")
        self.counts["completed"] += 1
        ticket.send("output", RowOutput("", [], True, result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-cls")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    tune_glibc_malloc()  # as `safesignal serve` does: the baselines get the same allocator settings
    sm = SafetyModel.from_pretrained(args.model).merge_lora().eval()
    sm.base.set_attn_implementation("sdpa")  # what a user of plain generate gets
    config = ServeConfig(model=args.model, port=args.port, default_temperature=0.0, max_queued=256)
    app = create_app(SequentialHFScheduler(sm, config), config, {})
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
