"""The chat-completions request body, checked field by field (OpenAI's shape plus `safety`).

Every rejection is an `ApiError` whose `param` names the field (`messages[2].content`,
`safety.threshold`), so a client sees what to fix; nothing here touches the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from ..decoding import Request, SafetyPolicy, Sampling
from .config import ServeConfig

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# OpenAI fields we accept and ignore (they change nothing a client relies on here)
IGNORED = {"user", "store", "metadata", "service_tier", "parallel_tool_calls", "stream_options", "model"}
# OpenAI fields we do not implement: accepted only at the value that means "off"
UNSUPPORTED_AT = {"n": 1, "logprobs": False, "top_logprobs": 0, "presence_penalty": 0, "frequency_penalty": 0,
                  "logit_bias": None, "tools": None, "tool_choice": None, "functions": None,
                  "function_call": None, "response_format": None, "audio": None, "modalities": None,
                  "prediction": None, "reasoning_effort": None}
SAFETY_FIELDS = ("threshold", "tau", "schedule")


class ApiError(Exception):
    """A request the server refuses: HTTP status and an OpenAI-style error object."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param)


@dataclass
class ChatRequest:
    """A checked request: what the scheduler decodes and what the response echoes."""

    request: Request
    stream: bool = False
    include_usage: bool = False
    overrides: dict = field(default_factory=dict)

    @property
    def messages(self) -> list[dict]:
        return self.request.messages


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"request body is not valid JSON ({err})", param=None) from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body: expected a JSON object", param=None)
    return body


def _number(value, param: str, low: float, high: float, *, low_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(param, f"expected a number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        raise _bad(param, f"must be in {'(' if low_open else '['}{low}, {high}], got {value}")
    return float(value)


def _optional_number(body: dict, name: str, low: float, high: float, default: float, **kwargs) -> float:
    return default if body.get(name) is None else _number(body[name], name, low, high, **kwargs)


def _integer(value, param: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(param, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise _bad(param, f"must be in [{low}, {high}], got {value}")
    return value


def _content(value, param: str) -> str:
    """A message's text: a string, or OpenAI's list of text parts."""
    if isinstance(value, list):
        texts = []
        for k, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad(f"{param}[{k}]", "only text parts ({'type': 'text', 'text': ...}) are supported")
            texts.append(part["text"])
        value = "".join(texts)
    if not isinstance(value, str):
        raise _bad(param, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise _bad(param, "is empty")
    return value


def _messages(body: dict, config: ServeConfig) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "expected a non-empty list of {'role', 'content'} objects")
    if len(messages) > config.max_messages:
        raise _bad("messages", f"{len(messages)} messages, over the limit of {config.max_messages}")
    checked = []
    for k, message in enumerate(messages):
        where = f"messages[{k}]"
        if not isinstance(message, dict):
            raise _bad(where, "expected an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role", f"{role!r} is not one of {sorted(ROLES)}")
        checked.append({"role": ROLES[role], "content": _content(message.get("content"), f"{where}.content")})
    if checked[-1]["role"] != "user":
        raise _bad(f"messages[{len(checked) - 1}].role", "the last message must be the user's")
    return checked


def _stop(body: dict, config: ServeConfig) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise _bad("stop", "expected a non-empty string or a list of them")
    if len(stop) > config.max_stop_sequences:
        raise _bad("stop", f"at most {config.max_stop_sequences} sequences, got {len(stop)}")
    return stop


def _policy(body: dict, config: ServeConfig, base: dict) -> tuple[SafetyPolicy, dict]:
    """The server's policy, with the request's `safety` overrides checked against the bounds."""
    overrides = body.get("safety")
    if overrides is None:
        return SafetyPolicy(**base), {}
    if not isinstance(overrides, dict):
        raise _bad("safety", "expected an object with any of " + ", ".join(SAFETY_FIELDS))
    unknown = sorted(set(overrides) - set(SAFETY_FIELDS))
    if unknown:
        raise _bad(f"safety.{unknown[0]}", f"not a field a request may set (allowed: {', '.join(SAFETY_FIELDS)})")
    fields = {}
    if "threshold" in overrides:
        fields["threshold"] = _number(overrides["threshold"], "safety.threshold", *config.threshold_bounds)
    if "tau" in overrides:
        fields["tau"] = _integer(overrides["tau"], "safety.tau", *config.tau_bounds)
    if "schedule" in overrides:
        if overrides["schedule"] not in config.allowed_schedules:
            raise _bad("safety.schedule", f"{overrides['schedule']!r} is not one of {list(config.allowed_schedules)}")
        fields["schedule"] = overrides["schedule"]
    return SafetyPolicy(**{**base, **fields}), fields


def parse_chat_request(body: dict, config: ServeConfig, base_policy: dict) -> ChatRequest:
    """Check every field of a chat-completions body; the decoding request it asks for. A field
    sent as null means its default, as OpenAI reads it."""
    body = {key: value for key, value in body.items() if value is not None}
    known = {"messages", "stream", "temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "stop",
             "safety"} | IGNORED | set(UNSUPPORTED_AT)
    unknown = sorted(set(body) - known)
    if unknown:
        raise _bad(unknown[0], "unrecognised request field")
    for name, off in UNSUPPORTED_AT.items():
        if name in body and body[name] != off and not (off is None and body[name] in ([], {})):
            raise _bad(name, f"not supported by this server (only {off!r})")
    if "model" in body and not isinstance(body["model"], str):
        raise _bad("model", "expected a string")
    messages = _messages(body, config)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", f"expected true or false, got {stream!r}")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options", "expected an object")
    temperature = _optional_number(body, "temperature", 0.0, 2.0, config.default_temperature)
    top_p = _optional_number(body, "top_p", 0.0, 1.0, config.default_top_p, low_open=True)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    which = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = config.default_max_tokens if max_tokens is None else _integer(max_tokens, which, 1,
                                                                               config.max_tokens_limit)
    seed = body.get("seed")
    if seed is not None:
        seed = _integer(seed, "seed", -(2 ** 63), 2 ** 63 - 1)
    policy, overrides = _policy(body, config, base_policy)
    sampling = Sampling(do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0,
                        top_p=top_p, seed=seed)
    request = Request(messages, policy=policy, sampling=sampling, max_new_tokens=max_tokens, stop=_stop(body, config))
    return ChatRequest(request, stream, bool(options.get("include_usage")), overrides)
