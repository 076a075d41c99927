"""OpenAI-shaped response bodies, with the safety verdict in an extension field `safety`.

`safety` on a completion (and on the last chunk of a stream): P(malicious) at the first
verdict, the final verdict, whether and where a refusal was injected, how many generated
tokens it kept before, the error when a check failed (the request was then refused), and
every check. Each streamed chunk carries the checks of its step in `safety_events`.
"""

from __future__ import annotations

import math

from ..decoding import GenerationResult, SafetyEvent

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "refusal_length": "length",
                  "forced_end": "length", "cancelled": "stop"}


def event_json(event: SafetyEvent) -> dict:
    return {"step": event.step, "p_malicious": _probability(event.probability), "label": event.label,
            "window": list(event.window) if event.window else None, "rule": event.rule, "outcome": event.outcome}


def _probability(p: float) -> float | None:
    return None if math.isnan(p) else round(p, 6)


def safety_json(result: GenerationResult) -> dict:
    events = result.events
    first = events[0] if events and events[0].step == 0 else None
    if result.intervened:
        verdict = "malicious"
    elif events:
        verdict = events[-1].label
    else:
        verdict = None
    return {
        "p_malicious_first": _probability(first.probability) if first else None,
        "verdict": verdict,
        "intervened": result.intervened,
        "intervention_index": result.intervention_index,
        "tokens_before_intervention": result.tokens_before_intervention,
        "error": result.error,
        "checks": len(events),
        "events": [event_json(e) for e in events],
    }


class StopTrimmer:
    """OpenAI leaves a stop sequence out of the text. Streamed text is held back while its tail
    could still begin one, and cut where one starts; the pieces add up to the trimmed text."""

    def __init__(self, stop: list[str]):
        self.stop = stop
        self.text = ""  # everything received
        self.sent = 0  # characters handed out
        self.stopped = False

    def feed(self, delta: str, final: bool) -> str:
        if self.stopped:
            return ""
        self.text += delta
        cut = min((i for i in (self.text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            end = cut
        elif final or not self.stop:
            end = len(self.text)
        else:  # hold back a tail that is a prefix of some stop sequence
            end = len(self.text)
            for s in self.stop:
                for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(s[:k]):
                        end = min(end, len(self.text) - k)
                        break
        end = max(end, self.sent)
        piece, self.sent = self.text[self.sent:end], end
        return piece


def usage_json(prompt_tokens: int, result: GenerationResult) -> dict:
    completion = len(result.token_ids)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}


def completion_json(ticket_id: str, model: str, created: float, text: str, result: GenerationResult,
                    prompt_tokens: int) -> dict:
    return {
        "id": ticket_id, "object": "chat.completion", "created": int(created), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": FINISH_REASONS.get(result.finish_reason, "stop"), "logprobs": None}],
        "usage": usage_json(prompt_tokens, result),
        "safety": safety_json(result),
    }


def chunk_json(ticket_id: str, model: str, created: float, *, content: str | None = None, role: bool = False,
               events: list[SafetyEvent] = (), result: GenerationResult | None = None, usage: dict | None = None,
               finish: bool = False) -> dict:
    delta = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    chunk = {"id": ticket_id, "object": "chat.completion.chunk", "created": int(created), "model": model,
             "choices": [{"index": 0, "delta": delta, "logprobs": None,
                          "finish_reason": FINISH_REASONS.get(result.finish_reason, "stop") if finish else None}]}
    if events:
        chunk["safety_events"] = [event_json(e) for e in events]
    if finish and result is not None:
        chunk["safety"] = safety_json(result)
    if usage is not None:
        chunk["usage"] = usage
    return chunk
