"""The OpenAI-compatible HTTP app: /v1/chat/completions (JSON or SSE), /v1/models, /health, /metrics.

The app only checks, queues and formats: decoding happens in the `Scheduler`'s thread. Every
error is an OpenAI-style error object naming the field; the server keeps serving.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .config import ServeConfig
from .protocol import ApiError, ChatRequest, parse_body, parse_chat_request
from .responses import StopTrimmer, chunk_json, completion_json, safety_json, usage_json
from .scheduler import Scheduler, Ticket

access_log = logging.getLogger("safesignal.serve.access")
OPEN_PATHS = ("/health",)  # answered without the API key (load balancers probe it)
CLIENT_GONE = 499  # nginx's "client closed request": logged, never read by anyone


def _error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _log(record: dict) -> None:
    access_log.info(json.dumps(record, ensure_ascii=False))


class AccessAndAuth:
    """Pure ASGI middleware (streams pass through untouched): the API key check, then one
    structured access-log line per request, without prompt text."""

    def __init__(self, app, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), {}

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if self.api_key and scope["path"] not in OPEN_PATHS and not self._authorised(scope):
                err = ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                               kind="authentication_error", code="invalid_api_key",
                               headers={"WWW-Authenticate": "Bearer"})
                return await _error_response(err)(scope, receive, send_logged)
            await self.app(scope, receive, send_logged)
        finally:
            client = scope.get("client")
            _log({"event": "access", "method": scope["method"], "path": scope["path"],
                  "status": status.get("code"), "duration_s": round(time.perf_counter() - started, 4),
                  "client": f"{client[0]}:{client[1]}" if client else None})

    def _authorised(self, scope) -> bool:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_large = ApiError(413, f"request body over {limit} bytes", param=None, code="body_too_large")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise too_large
    return bytes(body)


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the server's next ASGI message says so; polling
    `is_disconnected` does not see a client that left while its request body is read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _ClientGone(Exception):
    pass


async def _next_item(ticket: Ticket, gone: asyncio.Future):
    """The value of the ticket's next item; its ApiError raised; `_ClientGone` once the client has left."""
    get = asyncio.ensure_future(ticket.queue.get())
    await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not get.done():
        get.cancel()
        raise _ClientGone
    kind, value = get.result()
    if kind == "error":
        raise value
    return value


def _prompt_too_long(messages: list[dict], config: ServeConfig, max_token_chars: int | None) -> None:
    """Refuse, before any tokenising, a conversation that cannot fit: no token covers more than
    `max_token_chars` characters, so its content alone is at least that many tokens."""
    if not max_token_chars:
        return
    chars = sum(len(m["content"]) for m in messages)
    if chars > config.max_prompt_tokens * max_token_chars:
        raise ApiError(400, f"messages: {chars} characters is at least {-(-chars // max_token_chars)} tokens, over "
                            f"the limit of {config.max_prompt_tokens}", param="messages", code="context_length_exceeded")


def create_app(scheduler: Scheduler, config: ServeConfig, base_policy: dict,
               max_token_chars: int | None = None) -> FastAPI:
    """The app around a scheduler (started and stopped with the app). `max_token_chars`: the
    longest token of the tokenizer in characters, for refusing over-long prompts up front."""

    @asynccontextmanager
    async def lifespan(app):
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="safesignal", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AccessAndAuth, api_key=config.api_key)
    model_id = config.model_id

    @app.exception_handler(ApiError)
    async def api_error(request, err: ApiError):
        return _error_response(err)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request, err: RequestValidationError):
        first = err.errors()[0] if err.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return _error_response(ApiError(400, f"{param}: {first.get('msg', 'invalid')}", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, err: StarletteHTTPException):
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return JSONResponse({"error": {"message": f"{request.method} {request.url.path}: {err.detail}",
                                       "type": kind, "param": None, "code": None}},
                            status_code=err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request, err: Exception):
        logging.getLogger("safesignal.serve").exception("unhandled error")
        return JSONResponse({"error": {"message": f"internal error: {type(err).__name__}", "type": "server_error",
                                       "param": None, "code": None}}, status_code=500)

    @app.get("/health")
    async def health():
        metrics = scheduler.metrics(recent=0)
        alive = scheduler.alive
        body = {"status": "ok" if alive else "decode loop stopped", "model": model_id,
                "active_rows": metrics["active_rows"], "queued": metrics["queued"]}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def metrics(recent: int = 32):
        if not 0 <= recent <= 256:
            raise ApiError(400, f"recent: must be in [0, 256], got {recent}", param="recent")
        return scheduler.metrics(recent)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "safesignal"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = parse_body(await _read_body(request, config.max_body_bytes))
        chat = parse_chat_request(body, config, base_policy)
        if body.get("model") not in (None, model_id):
            raise ApiError(404, f"model: {body['model']!r} is not served here (this server serves {model_id!r})",
                           param="model", code="model_not_found")
        _prompt_too_long(chat.messages, config, max_token_chars)
        ticket = scheduler.submit(chat, asyncio.get_running_loop())
        streaming = False
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            await _next_item(ticket, gone)  # started: its prompt passed every check
            if chat.stream:
                streaming = True  # from here the stream's own `finally` answers for the ticket
                return StreamingResponse(_stream(ticket, chat, scheduler, model_id, config),
                                         media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            trimmer, text = StopTrimmer(chat.request.stop), ""
            while True:
                output = await _next_item(ticket, gone)
                text += trimmer.feed(output.delta, output.done)
                if output.done:
                    ticket.finished = True
                    _log_completion(ticket, output.result, config)
                    return completion_json(ticket.id, model_id, ticket.created, text, output.result,
                                           ticket.prompt_tokens)
        except _ClientGone:
            return Response(status_code=CLIENT_GONE)
        except ApiError:
            ticket.finished = True  # the scheduler already let it go
            raise
        finally:
            gone.cancel()  # (a stream listens for the disconnect itself)
            if not streaming and not ticket.finished:  # the client left (or the handler was cancelled)
                scheduler.cancel(ticket)

    return app


async def _stream(ticket: Ticket, chat: ChatRequest, scheduler: Scheduler, model_id: str, config: ServeConfig):
    """SSE chunks in OpenAI's format; a client that leaves cancels its row (the `finally`)."""
    def sse(payload: dict) -> str:
        return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

    trimmer = StopTrimmer(chat.request.stop)
    try:
        yield sse(chunk_json(ticket.id, model_id, ticket.created, role=True, content=""))
        while True:
            kind, value = await ticket.queue.get()
            if kind == "error":  # the headers are gone: the error travels as an event, then the stream ends
                ticket.finished = True  # (the scheduler already let it go: nothing to cancel)
                yield sse(value.body())
                break
            piece = trimmer.feed(value.delta, value.done)
            if piece or value.events:
                yield sse(chunk_json(ticket.id, model_id, ticket.created, content=piece, events=value.events))
            if value.done:
                ticket.finished = True
                yield sse(chunk_json(ticket.id, model_id, ticket.created, result=value.result, finish=True))
                if chat.include_usage:
                    usage = usage_json(ticket.prompt_tokens, value.result)
                    yield sse({**chunk_json(ticket.id, model_id, ticket.created, usage=usage), "choices": []})
                _log_completion(ticket, value.result, config)
                break
        yield "data: [DONE]\n\n"
    finally:
        if not ticket.finished:
            scheduler.cancel(ticket)


def _log_completion(ticket: Ticket, result, config: ServeConfig) -> None:
    safety = safety_json(result)
    record = {"event": "completion", "id": ticket.id, "prompt_tokens": ticket.prompt_tokens,
              "completion_tokens": len(result.token_ids), "finish_reason": result.finish_reason,
              "duration_s": round(time.time() - ticket.created, 4), "verdict": safety["verdict"],
              "p_malicious_first": safety["p_malicious_first"], "intervened": result.intervened,
              "error": result.error}
    if config.log_prompts:
        record["prompt_excerpt"] = ticket.chat.messages[-1]["content"][:200]
    _log(record)
