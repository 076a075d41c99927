"""`safesignal serve` live, on a tiny random model, driven by the real openai client and raw HTTP."""

from __future__ import annotations

import json
import logging
import threading
import time

import httpx2 as httpx
import openai
import pytest

from conftest import make_safety_model
from decoding_scripts import peaked
from serve_helpers import live_server, metrics, wait_until

MODEL = "smollm2-cls"
BREAD = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "How do I bake bread?"}]
LIMITS = dict(max_messages=4, max_prompt_tokens=200, max_tokens_limit=400, max_body_bytes=20_000,
              threshold_bounds=(0.01, 0.99))


@pytest.fixture(scope="module")
def model():
    # a sharpened LM head keeps greedy and sampled choices off near-ties, so exact-text
    # comparisons across batch compositions test the server, not float rounding
    return peaked(make_safety_model("llama", "sdpa"))


@pytest.fixture(scope="module")
def server(model):
    with live_server(model, **LIMITS) as (base, _):
        yield base


@pytest.fixture
def slow_model(model, monkeypatch):
    """The model with every forward 5 ms slower, so a request stays in flight long enough to watch."""
    forward = model.hidden_states

    def slowed(*args, **kwargs):
        time.sleep(0.005)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "hidden_states", slowed)
    return model


def client(base: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)


def streamed(stream) -> tuple[str, list[dict], dict | None, str | None]:
    """(text, safety events, final safety metadata, finish_reason) of an openai stream."""
    text, events, safety, finish = "", [], None, None
    for chunk in stream:
        extra = chunk.model_extra or {}
        events += extra.get("safety_events", [])
        safety = extra.get("safety", safety)
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, events, safety, finish


def same_checks(one: dict, other: dict) -> bool:
    """Two `safety` fields made the same checks with the same verdicts (P(malicious) to 1e-5)."""
    def fields(safety):
        return [(e["step"], e["label"], e["window"]) for e in safety["events"]]

    def probabilities(safety):
        return [e["p_malicious"] for e in safety["events"]]

    return fields(one) == fields(other) and probabilities(one) == pytest.approx(probabilities(other), abs=1e-5)


def ask(base, messages=BREAD, **kwargs):
    return client(base).chat.completions.create(model=MODEL, messages=messages, **kwargs)


def test_models_and_health(server):
    assert [m.id for m in client(server).models.list()] == [MODEL]
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["active_rows"] == 0


def test_completion_carries_safety_metadata_and_equals_the_decoder(server, model):
    response = ask(server, max_tokens=12, temperature=0)
    meta = response.model_extra["safety"]
    expected = model.generate(BREAD, max_new_tokens=12, policy=model.default_policy(max_prompt_tokens=200))
    assert response.choices[0].message.content == expected.text
    assert meta["intervened"] == expected.intervened and meta["checks"] == len(expected.events)
    assert meta["p_malicious_first"] == pytest.approx(expected.events[0].probability, abs=1e-5)
    assert response.usage.completion_tokens == len(expected.token_ids)
    assert response.choices[0].finish_reason == {"eos": "stop", "length": "length", "refusal_length": "length"}[
        expected.finish_reason]


def test_stream_deltas_add_up_to_the_completion_alone_and_inside_a_busy_batch(server):
    sampling = dict(max_tokens=24, temperature=0.9, top_p=0.95, seed=11)
    reference = ask(server, **sampling)
    text, events, safety, finish = streamed(ask(server, stream=True, **sampling))
    assert text == reference.choices[0].message.content
    assert safety == reference.model_extra["safety"]
    assert [e["step"] for e in events] == [e["step"] for e in safety["events"]]
    assert finish == reference.choices[0].finish_reason

    # the same request while other requests decode beside it
    others, stop = [], threading.Event()

    def busy(seed):
        while not stop.is_set():
            streamed(ask(server, messages=[{"role": "user", "content": f"Tell me about rivers {seed}"}],
                         stream=True, max_tokens=40, temperature=1.0, seed=seed))

    for seed in range(3):
        others.append(threading.Thread(target=busy, args=(seed,)))
        others[-1].start()
    try:
        wait_until(lambda: metrics(server)["active_rows"] >= 2)
        before = metrics(server)["shared_step_forwards"]
        busy_text, _, busy_safety, _ = streamed(ask(server, stream=True, **sampling))
        assert metrics(server)["shared_step_forwards"] > before  # it really shared forwards with others
    finally:
        stop.set()
        for thread in others:
            thread.join(60)
    assert busy_text == text
    assert same_checks(busy_safety, safety)


LONG = [{"role": "user", "content": "Explain photosynthesis in detail."}]  # greedy on the tiny model: no EOS in 400 tokens


def test_a_request_that_arrives_mid_generation_is_served_before_the_first_ends(server, slow_model):
    first_done, ids = threading.Event(), {}

    def long_request():
        for chunk in ask(server, stream=True, max_tokens=300, temperature=0, messages=LONG):
            if chunk.choices and chunk.choices[0].delta.content:
                ids.setdefault("first", chunk.id)
        first_done.set()

    thread = threading.Thread(target=long_request)
    thread.start()
    wait_until(lambda: ids)
    seen = None
    for chunk in ask(server, stream=True, max_tokens=5, temperature=0):
        if chunk.choices and chunk.choices[0].delta.content:
            assert not first_done.is_set(), "the second request waited for the first to end"
            seen = metrics(server)["recent_forwards"]  # while the first is still decoding
            ids["second"] = chunk.id
            break
    thread.join(60)
    assert seen is not None, "the second request produced no content"
    both = {ids["first"], ids["second"]}
    assert any(f["kind"] == "step" and both <= set(f["requests"]) for f in seen)


def test_a_client_that_disconnects_frees_its_row(server, slow_model):
    before = metrics(server).get("requests_cancelled", 0)
    body = {"model": MODEL, "messages": LONG, "stream": True, "max_tokens": 400, "temperature": 0}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
        assert metrics(server)["active_rows"] == 1
    wait_until(lambda: metrics(server)["active_rows"] == 0)
    assert metrics(server)["requests_cancelled"] == before + 1


def test_a_streamed_refusal_after_an_intervention(server, model):
    text, events, safety, _ = streamed(ask(server, stream=True, max_tokens=20, temperature=0,
                                           extra_body={"safety": {"threshold": 0.01}}))
    policy = model.default_policy()
    assert safety["intervened"] and safety["verdict"] == "malicious"
    assert text.startswith(policy.refusal_prefix)
    assert any(e["outcome"] == "injected" for e in events)


def test_a_failing_check_refuses_that_request_and_the_server_goes_on(server, model, monkeypatch):
    def broken(hidden):
        raise RuntimeError("head offline")

    monkeypatch.setattr(model, "cls_logits", broken)
    refused = ask(server, max_tokens=10, temperature=0)
    monkeypatch.undo()
    meta = refused.model_extra["safety"]
    assert meta["intervened"] and "head offline" in meta["error"]
    assert refused.choices[0].message.content.startswith(model.default_policy().refusal_prefix)
    assert ask(server, max_tokens=4, temperature=0).model_extra["safety"]["error"] is None


BAD_REQUESTS = [
    (b"{oops", 400, None),
    (json.dumps({"messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "messages[0].role"),
    (json.dumps({"messages": [{"role": "user", "content": ""}]}).encode(), 400, "messages[0].content"),
    (json.dumps({"messages": [{"role": "user", "content": ["x"]}]}).encode(), 400, "messages[0].content[0]"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}] * 5}).encode(), 400, "messages"),
    (json.dumps({"messages": [{"role": "user", "content": "word " * 400}]}).encode(), 400, "messages"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 30_000}]}).encode(), 413, None),
    (json.dumps({"messages": [{"role": "user", "content": "y " * 9_000}]}).encode(), 400, "messages"),  # refused untokenised
    (json.dumps({"messages": BREAD, "max_completion_tokens": None, "max_tokens": 10 ** 9}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": BREAD, "max_tokens": 401}).encode(), 400, "max_tokens"),
    (json.dumps({"messages": BREAD, "temperature": "warm"}).encode(), 400, "temperature"),
    (json.dumps({"messages": BREAD, "safety": {"threshold": 0.999}}).encode(), 400, "safety.threshold"),
    (json.dumps({"messages": BREAD, "model": "gpt-4"}).encode(), 404, "model"),
]


@pytest.mark.parametrize("raw,status,param", BAD_REQUESTS)
def test_bad_requests_get_an_openai_error_naming_the_field_and_the_server_keeps_serving(server, raw, status, param):
    response = httpx.post(f"{server}/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]
    assert ask(server, max_tokens=2, temperature=0).choices[0].message.content is not None


def test_unknown_path_and_method_are_openai_errors(server):
    missing = httpx.get(f"{server}/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert httpx.get(f"{server}/v1/chat/completions").status_code == 405
    for recent in ("many", "-1", "300"):
        bad = httpx.get(f"{server}/metrics", params={"recent": recent})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "recent"


def test_api_key(model):
    with live_server(model, api_key="s3cret") as (base, _):
        assert httpx.get(f"{base}/health").status_code == 200  # probes need no key
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = httpx.get(f"{base}/v1/models", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{base}/metrics").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            client(base, "wrong").models.list()
        assert client(base, "s3cret").chat.completions.create(model=MODEL, messages=BREAD, max_tokens=3).choices


def test_overload_gets_429_with_retry_after_and_the_queue_stays_bounded(slow_model):
    with live_server(slow_model, max_batch_rows=1, max_queued=1, retry_after_s=3) as (base, _):
        holders = []
        body = {"model": MODEL, "messages": LONG, "stream": True, "max_tokens": 200, "temperature": 0}

        def hold():
            with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as response:
                for _ in response.iter_lines():
                    pass

        for _ in range(2):  # one decodes, one waits in the queue
            holders.append(threading.Thread(target=hold))
            holders[-1].start()
        wait_until(lambda: metrics(base)["active_rows"] == 1 and metrics(base)["queued"] == 1)
        rejected = httpx.post(f"{base}/v1/chat/completions", json={**body, "stream": False})
        assert rejected.status_code == 429 and rejected.headers["retry-after"] == "3"
        assert rejected.json()["error"]["type"] == "rate_limit_error"
        for thread in holders:
            thread.join(120)
        assert metrics(base)["requests_rejected_queue_full"] == 1
        assert httpx.post(f"{base}/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2}).status_code == 200


def test_access_logs_carry_no_prompt_text_unless_asked(model, caplog):
    secret = "my secret sourdough question"
    messages = [{"role": "user", "content": secret}]
    for log_prompts in (False, True):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="safesignal.serve.access"):
            with live_server(model, log_prompts=log_prompts) as (base, _):
                ask(base, messages=messages, max_tokens=3)
                wait_until(lambda: any('"event": "completion"' in r.getMessage() for r in caplog.records))
        lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "safesignal.serve.access"]
        access = [line for line in lines if line["event"] == "access" and line["path"] == "/v1/chat/completions"]
        completion = [line for line in lines if line["event"] == "completion"]
        assert access and access[0]["status"] == 200 and completion[0]["completion_tokens"] == 3
        assert (secret in caplog.text) == log_prompts


def test_deltas_are_never_retracted_under_a_stop_sequence(server):
    reference = ask(server, max_tokens=30, temperature=0).choices[0].message.content
    if len(reference) < 6:
        pytest.skip("the tiny model answered too briefly to cut")
    stop = reference[3:6]
    cut = reference[: reference.find(stop)]
    text, _, _, finish = streamed(ask(server, stream=True, max_tokens=30, temperature=0, stop=[stop]))
    plain = ask(server, max_tokens=30, temperature=0, stop=[stop])
    assert text == plain.choices[0].message.content == cut
    assert finish == "stop"


def test_a_long_prompt_is_prefilled_in_chunks_between_the_running_rows_steps(model, slow_model):
    long_prompt = [{"role": "system", "content": "You answer questions about kitchens. " * 6},
                   {"role": "user", "content": "How do I bake bread? " * 4}]
    with live_server(model, prefill_token_budget=16) as (base, _):
        alone = ask(base, messages=long_prompt, max_tokens=8, temperature=0)  # nothing running: one forward
        done = threading.Event()

        def running():
            streamed(ask(base, stream=True, max_tokens=300, temperature=0, messages=LONG))
            done.set()

        thread = threading.Thread(target=running)
        thread.start()
        wait_until(lambda: metrics(base)["active_rows"] == 1)
        beside = ask(base, messages=long_prompt, max_tokens=8, temperature=0)
        forwards = metrics(base, recent=256)["recent_forwards"]
        assert not done.is_set(), "the running request ended before the long prompt joined"
        thread.join(60)
    assert beside.choices[0].message.content == alone.choices[0].message.content
    assert same_checks(beside.model_extra["safety"], alone.model_extra["safety"])
    kinds = [f["kind"] for f in forwards if beside.id in f["requests"]]
    chunks = kinds.count("prefill_chunk")
    assert chunks >= beside.usage.prompt_tokens // 16 - 1 and "prefill" in kinds
    # between two chunks of the long prompt, the running row took a step
    order = [f["kind"] for f in forwards]
    first, last = order.index("prefill_chunk"), len(order) - 1 - order[::-1].index("prefill_chunk")
    assert order[first:last].count("step") >= chunks - 1


def test_a_non_streaming_client_that_leaves_frees_its_row(server, slow_model):
    before = metrics(server).get("requests_cancelled", 0)
    body = {"model": MODEL, "messages": LONG, "max_tokens": 400, "temperature": 0}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server}/v1/chat/completions", json=body, timeout=0.5)
    wait_until(lambda: metrics(server)["active_rows"] == 0)
    assert metrics(server)["requests_cancelled"] == before + 1


def test_a_request_the_chat_template_refuses_fails_alone(server, model, monkeypatch, slow_model):
    from jinja2 import TemplateError

    encode = model.formatter.encode

    def picky(messages, *args, **kwargs):
        if any("FORBIDDEN" in m["content"] for m in messages):
            raise TemplateError("Conversation roles must alternate")
        return encode(messages, *args, **kwargs)

    monkeypatch.setattr(model.formatter, "encode", picky)
    results = {}
    thread = threading.Thread(target=lambda: results.setdefault(
        "running", ask(server, messages=LONG, max_tokens=120, temperature=0)))
    thread.start()
    wait_until(lambda: metrics(server)["active_rows"] == 1)
    refused = httpx.post(f"{server}/v1/chat/completions",
                         json={"messages": [{"role": "user", "content": "FORBIDDEN words"}], "max_tokens": 3})
    assert refused.status_code == 400 and "alternate" in refused.json()["error"]["message"]
    assert refused.json()["error"]["param"] == "messages"
    thread.join(60)
    assert results["running"].usage.completion_tokens == 120  # the running request never noticed


def test_a_request_is_tokenised_once(server, model, monkeypatch):
    """The count that admits a request and the prefill pass share one encoding (the decode
    thread tokenises, so a second pass would stall every running row)."""
    encode, calls = model.formatter.encode, []

    def counted(messages, *args, **kwargs):
        calls.append(messages[-1]["content"])
        return encode(messages, *args, **kwargs)

    monkeypatch.setattr(model.formatter, "encode", counted)
    ask(server, messages=[{"role": "user", "content": "count my encodings"}], max_tokens=2)
    assert calls.count("count my encodings") == 1
