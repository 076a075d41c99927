"""The server's request checks, stop trimming, config loading and safety metadata, without a server."""

from __future__ import annotations

import math

import pytest

from safesignal.decoding import GenerationResult, SafetyEvent
from safesignal.serve import ServeConfig, load_serve_config
from safesignal.serve.protocol import ApiError, parse_body, parse_chat_request
from safesignal.serve.responses import StopTrimmer, safety_json

CONFIG = ServeConfig(max_messages=3, max_tokens_limit=100, default_max_tokens=20, threshold_bounds=(0.2, 0.8),
                     tau_bounds=(1, 4), allowed_schedules=("annealing", "each"))
USER = [{"role": "user", "content": "hello"}]


def parse(**body):
    return parse_chat_request({"messages": USER, **body}, CONFIG, {})


def test_fields_map_onto_the_decoding_request():
    chat = parse(temperature=0.7, top_p=0.9, max_tokens=33, seed=5, stop="END", stream=True,
                 safety={"threshold": 0.3, "tau": 2, "schedule": "each"},
                 stream_options={"include_usage": True}, user="someone")
    request = chat.request
    assert (request.sampling.do_sample, request.sampling.temperature, request.sampling.top_p,
            request.sampling.seed) == (True, 0.7, 0.9, 5)
    assert request.max_new_tokens == 33 and request.stop == ["END"] and chat.stream and chat.include_usage
    assert (request.policy.threshold, request.policy.tau, request.policy.schedule) == (0.3, 2, "each")
    assert chat.overrides == {"threshold": 0.3, "tau": 2, "schedule": "each"}


def test_defaults_temperature_zero_is_greedy_and_roles_are_normalised():
    chat = parse_chat_request({"messages": [{"role": "developer", "content": "be brief"},
                                            {"role": "user", "content": [{"type": "text", "text": "hi "},
                                                                         {"type": "text", "text": "there"}]}],
                               "temperature": 0}, CONFIG, {"threshold": 0.4})
    assert chat.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]
    assert not chat.request.sampling.do_sample
    assert chat.request.max_new_tokens == CONFIG.default_max_tokens
    assert chat.request.policy.threshold == 0.4  # the server's policy when the request says nothing


BAD = [
    (dict(messages=[]), "messages"),
    (dict(messages="hi"), "messages"),
    (dict(messages=USER * 4), "messages"),
    (dict(messages=[{"role": "bot", "content": "x"}]), "messages[0].role"),
    (dict(messages=[{"content": "x"}]), "messages[0].role"),
    (dict(messages=["x"]), "messages[0]"),
    (dict(messages=[{"role": "user", "content": ""}]), "messages[0].content"),
    (dict(messages=[{"role": "user", "content": "   "}]), "messages[0].content"),
    (dict(messages=[{"role": "user", "content": 7}]), "messages[0].content"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     "messages[0].content[0]"),
    (dict(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]), "messages[1].role"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=101), "max_tokens"),
    (dict(max_tokens="12"), "max_tokens"),
    (dict(max_tokens=1.5), "max_tokens"),
    (dict(max_completion_tokens=True), "max_completion_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=2.5), "temperature"),
    (dict(temperature="hot"), "temperature"),
    (dict(temperature=math.nan), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(top_p=1.2), "top_p"),
    (dict(seed="1"), "seed"),
    (dict(stop=5), "stop"),
    (dict(stop=["a", ""]), "stop"),
    (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
    (dict(stream="yes"), "stream"),
    (dict(n=2), "n"),
    (dict(logprobs=True), "logprobs"),
    (dict(tools=[{"type": "function"}]), "tools"),
    (dict(frobnicate=1), "frobnicate"),
    (dict(model=3), "model"),
    (dict(safety="strict"), "safety"),
    (dict(safety={"threshold": 0.9}), "safety.threshold"),
    (dict(safety={"threshold": 0.1}), "safety.threshold"),
    (dict(safety={"threshold": "low"}), "safety.threshold"),
    (dict(safety={"tau": 5}), "safety.tau"),
    (dict(safety={"tau": 2.0}), "safety.tau"),
    (dict(safety={"schedule": "periodic"}), "safety.schedule"),
    (dict(safety={"r1": 3}), "safety.r1"),
]


@pytest.mark.parametrize("fields,param", BAD, ids=[p for _, p in BAD])
def test_each_bad_field_is_a_400_naming_it(fields, param):
    with pytest.raises(ApiError) as caught:
        parse_chat_request({"messages": USER, **fields}, CONFIG, {})
    assert caught.value.status == 400
    assert caught.value.param == param
    assert caught.value.body()["error"]["type"] == "invalid_request_error"
    assert caught.value.message.startswith(param)


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_a_body_that_is_not_a_json_object_is_a_400(raw):
    with pytest.raises(ApiError) as caught:
        parse_body(raw)
    assert caught.value.status == 400


def trimmed_pieces(text: str, cuts: list[int], stop: list[str]) -> list[str]:
    trimmer, pieces, start = StopTrimmer(stop), [], 0
    for end in cuts + [len(text)]:
        pieces.append(trimmer.feed(text[start:end], final=end == len(text)))
        start = end
    return pieces


@pytest.mark.parametrize("cuts", [[], [1], [3, 4, 5], [5, 6, 7, 8, 9, 10, 11], list(range(1, 20))])
def test_stop_sequences_are_cut_and_streamed_pieces_add_up(cuts):
    text = "Paris is nice. END of story END"
    stop = ["END", "zzz"]
    expected = text[: text.find("END")]
    pieces = trimmed_pieces(text, cuts, stop)
    assert "".join(pieces) == expected
    # no piece ever showed a character past the cut
    assert all("E" not in p for p in pieces)


def test_stop_trimmer_releases_a_held_back_prefix_that_turned_out_not_to_be_a_stop():
    pieces = trimmed_pieces("abcENxyz", [4, 5], ["END"])
    assert pieces[0] == "abc" and "".join(pieces) == "abcENxyz"


def test_safety_metadata_reports_the_first_verdict_and_the_intervention():
    events = [SafetyEvent(0, 0.2, "benign", None, "query"), SafetyEvent(3, 0.9, "malicious", (1, 3), "rule2"),
              SafetyEvent(4, math.nan, "malicious", (1, 4), "rule3", "fail_closed")]
    result = GenerationResult("x", [1, 2], intervened=True, intervention_index=2, tokens_before_intervention=2,
                              events=events, error="safety check raised RuntimeError: boom")
    meta = safety_json(result)
    assert meta["p_malicious_first"] == 0.2 and meta["verdict"] == "malicious" and meta["intervened"]
    assert (meta["intervention_index"], meta["tokens_before_intervention"]) == (2, 2)
    assert meta["error"].startswith("safety check raised") and meta["checks"] == 3
    assert meta["events"][2]["p_malicious"] is None  # NaN is not JSON: reported as null
    assert safety_json(GenerationResult("", [], events=[]))["verdict"] is None


def test_serve_config_from_yaml_env_and_flags(tmp_path, monkeypatch):
    path = tmp_path / "serve.yaml"
    path.write_text("max_batch_rows: 4\nport: 9000\npolicy: {threshold: 0.6}\n")
    monkeypatch.setenv("SAFESIGNAL_API_KEY", "from-env")
    config = load_serve_config(str(path), port=9100, host=None)
    assert (config.max_batch_rows, config.port, config.host, config.policy) == (4, 9100, "127.0.0.1",
                                                                                 {"threshold": 0.6})
    assert config.api_key == "from-env"
    assert load_serve_config(str(path), api_key="flag").api_key == "flag"
    path.write_text("max_batch_row: 4\n")
    with pytest.raises(ValueError, match=r"serve.yaml: unknown field\(s\) \['max_batch_row'\]"):
        load_serve_config(str(path))
    with pytest.raises(ValueError, match="threshold_bounds"):
        ServeConfig(threshold_bounds=(0.5, 1.0))
    with pytest.raises(ValueError, match="default_max_tokens"):
        ServeConfig(default_max_tokens=2000, max_tokens_limit=100)


def test_null_fields_mean_their_defaults():
    chat = parse(n=None, stream=None, logprobs=None, temperature=None, max_tokens=None, stop=None, safety=None)
    assert not chat.stream and chat.request.max_new_tokens == CONFIG.default_max_tokens
    assert chat.request.sampling.temperature == CONFIG.default_temperature and chat.request.stop == []


def test_a_cancel_reaches_only_the_row_of_its_own_request():
    """Row ids start again in a fresh decoder (after a failure): a late cancel from a request
    that already ended must not stop the request that now holds its old id."""
    import asyncio

    from conftest import make_safety_model
    from safesignal.serve.scheduler import Scheduler

    scheduler = Scheduler(make_safety_model("llama", "sdpa"), ServeConfig())
    cancelled = []
    scheduler.decoder.cancel = cancelled.append
    scheduler._publish = lambda: None  # (no rows really decode here)
    loop = asyncio.new_event_loop()
    try:
        old = scheduler.submit(parse(), loop)
        new = scheduler.submit(parse(), loop)
    finally:
        loop.close()
    scheduler._waiting.clear()
    old.row_id = new.row_id = 0
    scheduler._running[0] = new  # the old request's row id now belongs to the new one
    scheduler._cancel_rows([old])
    assert cancelled == []
    scheduler._cancel_rows([new])
    assert cancelled == [0]
