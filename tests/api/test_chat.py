"""POST /v1/chat/completions through the Flask app against the fake upstream."""

from __future__ import annotations

import json
import re
import time

import pytest

from qwenproxy import create_app
from tests.conftest import free_port, write_creds
from tests.fake_upstream import (
    USAGE_CHUNK,
    chunk,
    reply_error,
    reply_hang,
    reply_stream,
    unindexed_tool_call_events,
)

USER = [{"role": "user", "content": "hi"}]


def post(client, body, **kwargs):
    return client.post("/v1/chat/completions", json=body, **kwargs)


def sse_payloads(response) -> list[str]:
    text = response.get_data(as_text=True)
    assert text.endswith("\n\n")
    return [frame[len("data: ") :] for frame in text.split("\n\n") if frame.startswith("data: ")]


def test_non_stream_answer_reaches_client_with_upstream_model_name(client, fake):
    response = post(client, {"model": "qwen-oauth:qwen3-coder-plus", "messages": USER})
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "Hello from fake"
    assert response.headers["X-Qwenproxy-Backend"] == "qwen-oauth"
    # qwen-code's OAuth path takes `coder-model`; the seed's name is an alias of it.
    assert response.headers["X-Qwenproxy-Model"] == "coder-model"
    sent = fake.chat_requests[-1]
    assert sent["body"]["model"] == "coder-model"
    assert sent["body"]["messages"] == USER


def test_upstream_gets_qwen_headers_and_bearer_token(client, fake):
    post(client, {"model": "qwen3-coder-plus", "messages": USER})
    headers = fake.chat_requests[-1]["headers"]
    assert headers["authorization"] == "Bearer tok-initial"
    assert headers["x-dashscope-authtype"] == "qwen-oauth"
    assert headers["x-dashscope-cachecontrol"] == "enable"
    assert re.fullmatch(r"QwenCode/[0-9.]+ \(linux; [a-z0-9_]+\)", headers["user-agent"])
    assert headers["x-dashscope-useragent"] == headers["user-agent"]
    assert headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "model, upstream_model",
    [
        ("qwen-oauth/qwen3-coder-flash", "coder-model"),
        ("qwen3-coder-plus", "coder-model"),
        ("", "coder-model"),
        (None, "coder-model"),
        ("qwen-oauth", "coder-model"),
        ("qwen-plus", "qwen-plus"),
        ("some-future-model", "some-future-model"),
        ("qwen/qwen3-coder", "qwen/qwen3-coder"),
    ],
)
def test_model_names_route_to_the_upstream_model(client, fake, model, upstream_model):
    body = {"messages": USER}
    if model is not None:
        body["model"] = model
    assert post(client, body).status_code == 200
    assert fake.chat_requests[-1]["body"]["model"] == upstream_model


def test_unknown_backend_prefix_is_404_listing_known_backends(client, fake):
    response = post(client, {"model": "nosuch:model", "messages": USER})
    assert response.status_code == 404
    error = response.json["error"]
    assert error["code"] == "model_not_found"
    assert "qwen-oauth" in error["message"]
    assert fake.chat_requests == []


def test_unknown_fields_pass_through_untouched(client, fake):
    extra = {
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
        "parallel_tool_calls": False,
        "user": "u1",
        "n": 1,
        "seed": 42,
    }
    post(client, {"model": "qwen3-coder-plus", "messages": USER, **extra})
    sent = fake.chat_requests[-1]["body"]
    for key, value in extra.items():
        assert sent[key] == value


def test_several_system_messages_are_merged_into_one_leading_string(client, fake):
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": "Answer in English."},
        {"role": "assistant", "content": "hello"},
        {"role": "system", "content": "Never apologise."},
        {"role": "user", "content": "again"},
    ]
    post(client, {"model": "qwen3-coder-plus", "messages": messages})
    sent = fake.chat_requests[-1]["body"]["messages"]
    assert sent[0] == {
        "role": "system",
        "content": "You are terse.\n\nAnswer in English.\n\nNever apologise.",
    }
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]


def test_system_parts_without_a_string_text_are_skipped_when_merged(client, fake):
    # A part whose `text` is null used to end the request with a 500 (it was joined).
    parts = [{"type": "text", "text": None}, {"type": "text", "text": "A"}]
    messages = [
        {"role": "system", "content": parts},
        {"role": "developer", "content": [{"type": "input_text", "text": "B"}]},
        {"role": "user", "content": "hi"},
    ]
    response = post(client, {"model": "qwen3-coder-plus", "messages": messages})
    assert response.status_code == 200
    assert fake.chat_requests[-1]["body"]["messages"][0] == {"role": "system", "content": "A\n\nB"}


MARKER = {"type": "ephemeral"}


def marked_chat_body(stream: bool = False) -> dict:
    return {
        "model": "qwen3-coder-plus",
        "stream": stream,
        "messages": [
            {
                "role": "system",
                "content": [{"type": "text", "text": "Be brief.", "cache_control": MARKER}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "the repo", "cache_control": MARKER},
                    {"type": "text", "text": "question"},
                ],
            },
        ],
        "tools": [
            {"type": "function", "function": {"name": "Read"}, "cache_control": MARKER},
        ],
    }


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("switch", [True, False], ids=["markers-on", "markers-off"])
def test_a_clients_own_markers_pass_untouched(make_config, fake, stream, switch):
    # The CACHE_MARKERS switch governs the Anthropic door's markers only: what a
    # chat-completions client put in its request is forwarded as it is.
    client = create_app(make_config(cache_markers={"qwen-oauth": switch})).test_client()
    body = marked_chat_body(stream)
    response = post(client, body)
    assert response.status_code == 200
    sent = fake.chat_requests[-1]["body"]
    assert sent["messages"] == body["messages"]
    assert sent["tools"] == body["tools"]


def test_marked_system_messages_merge_into_one_of_parts_with_their_markers(client, fake):
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "A", "cache_control": MARKER}]},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": "B"},
    ]
    post(client, {"model": "qwen3-coder-plus", "messages": messages})
    sent = fake.chat_requests[-1]["body"]["messages"]
    assert sent == [
        {
            "role": "system",
            "content": [
                {"type": "text", "text": "A", "cache_control": MARKER},
                {"type": "text", "text": "B"},
            ],
        },
        {"role": "user", "content": "hi"},
    ]


def test_stream_passes_each_event_through_and_ends_with_done(client, fake):
    response = post(client, {"model": "qwen3-coder-plus", "messages": USER, "stream": True})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    payloads = sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    text = "".join(json.loads(p)["choices"][0]["delta"].get("content", "") for p in payloads[:-1])
    assert text == "Hello from fake"


def test_stream_include_usage_sends_final_usage_chunk(client, fake):
    body = {
        "model": "qwen3-coder-plus",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    payloads = sse_payloads(post(client, body))
    last = json.loads(payloads[-2])
    assert last["choices"] == []
    assert last["usage"] == USAGE_CHUNK["usage"]
    assert fake.chat_requests[-1]["body"]["stream_options"] == {"include_usage": True}


def test_streamed_tool_call_deltas_get_an_index_when_upstream_omits_it(client, fake):
    fake.script.append(
        reply_stream(
            [
                *unindexed_tool_call_events("read", ['{"path": ', '"a.py"}']),
                chunk(
                    {
                        "tool_calls": [
                            {
                                "id": "call_2",
                                "type": "function",
                                "function": {"name": "ls", "arguments": "{}"},
                            }
                        ]
                    }
                ),
                chunk({}, finish="tool_calls"),
            ]
        )
    )
    payloads = sse_payloads(post(client, {"messages": USER, "stream": True}))
    indexes = [
        call["index"]
        for p in payloads[:-1]
        for call in json.loads(p)["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert indexes == [0, 0, 0, 1]


def test_error_after_stream_started_becomes_an_sse_error_frame(client, fake):
    fake.script.append(reply_stream([chunk({"content": "partial"})], done=False))
    payloads = sse_payloads(post(client, {"messages": USER, "stream": True}))
    assert json.loads(payloads[0])["choices"][0]["delta"]["content"] == "partial"
    error = json.loads(payloads[-1])["error"]
    assert error["code"] == "upstream_error"
    assert "[DONE]" not in payloads


def test_upstream_error_event_mid_stream_is_passed_on_without_done(client, fake):
    fake.script.append(
        reply_stream([chunk({"content": "a"}), {"error": {"message": "overloaded"}}], done=False)
    )
    payloads = sse_payloads(post(client, {"messages": USER, "stream": True}))
    assert json.loads(payloads[-1]) == {"error": {"message": "overloaded"}}
    assert "[DONE]" not in payloads


def test_malformed_stream_event_from_upstream_is_a_clean_error_frame(client, fake):
    fake.script.append(reply_stream(["{not json"]))
    payloads = sse_payloads(post(client, {"messages": USER, "stream": True}))
    assert json.loads(payloads[-1])["error"]["code"] == "upstream_error"


def test_upstream_4xx_keeps_status_and_message(client, fake):
    fake.script.append(reply_error(400, "Range of max_tokens should be [1, 8192]"))
    response = post(client, {"messages": USER, "max_tokens": 99999})
    assert response.status_code == 400
    assert "Range of max_tokens" in response.json["error"]["message"]


def test_upstream_429_passes_retry_after_through(client, fake):
    fake.script.append(reply_error(429, "slow down", headers=[("Retry-After", "17")]))
    response = post(client, {"messages": USER})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "17"
    assert response.json["error"]["type"] == "rate_limit_error"


def test_upstream_429_before_a_stream_is_a_429_not_a_stream(client, fake):
    fake.script.append(reply_error(429, "quota", code="insufficient_quota"))
    response = post(client, {"messages": USER, "stream": True})
    assert response.status_code == 429
    assert response.json["error"]["message"].endswith("quota")


def test_upstream_5xx_is_502(client, fake):
    fake.script.append(reply_error(500, "boom"))
    response = post(client, {"messages": USER})
    assert response.status_code == 502
    assert response.json["error"]["code"] == "upstream_error"


def test_upstream_refusing_connections_is_502(make_config, creds_path, fake):
    # resource_url in the creds file wins over QWEN_API_BASE; point it at a closed port.
    # (Written before the app starts: a running proxy re-reads the file every 5 s at most.)
    write_creds(creds_path, fake, resource_url=f"http://127.0.0.1:{free_port()}")
    app = create_app(make_config())
    response = post(app.test_client(), {"messages": USER})
    assert response.status_code == 502
    assert "Could not reach backend qwen-oauth" in response.json["error"]["message"]


def test_hung_upstream_is_504(make_config, fake):
    fake.script.append(reply_hang(3))
    client = create_app(make_config(upstream_read_timeout=0.5)).test_client()
    started = time.monotonic()
    response = post(client, {"messages": USER})
    assert response.status_code == 504
    assert response.json["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 2.5


def test_upstream_error_whose_body_never_ends_keeps_its_status(make_config, fake):
    cut = ("503 Service Unavailable", [("Content-Length", "100")], [b'{"error": {"mess'])
    fake.script.append(lambda f, r: cut)
    client = create_app(make_config(upstream_read_timeout=0.3)).test_client()
    response = post(client, {"messages": USER})
    assert response.status_code == 502  # as for any upstream 5xx: not the proxy's own 500
    assert response.json["error"]["message"].endswith("Backend qwen-oauth: Service Unavailable")


def test_upstream_answering_invalid_json_is_502(client, fake):
    fake.script.append(lambda f, r: ("200 OK", [("Content-Type", "application/json")], [b"<html>"]))
    response = post(client, {"messages": USER})
    assert response.status_code == 502
    assert "invalid JSON" in response.json["error"]["message"]


@pytest.mark.parametrize(
    "raw, content_type, status, param",
    [
        (b"{not json", "application/json", 400, None),
        (b"", "application/json", 400, None),
        (b"[1, 2]", "application/json", 400, None),
        (b'{"model": "x"}', "application/json", 400, "messages"),
        (b'{"messages": []}', "application/json", 400, "messages"),
        (b'{"messages": "hi"}', "application/json", 400, "messages"),
        (b'{"messages": [{"role": "user"}]}', "application/json", 400, "messages[0]"),
        (b'{"messages": [{"role": 1, "content": "x"}]}', "application/json", 400, "messages[0]"),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            "text/plain",
            400,
            "stream",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "model": 7}',
            "application/json",
            400,
            "model",
        ),
        (
            b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
            "application/json",
            400,
            "temperature",
        ),
        (b'\xff\xfe{"messages"', "application/json", 400, None),
    ],
)
def test_malformed_requests_get_openai_shaped_4xx(client, fake, raw, content_type, status, param):
    response = client.post("/v1/chat/completions", data=raw, content_type=content_type)
    assert response.status_code == status
    error = response.json["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert fake.chat_requests == []


def test_body_over_max_body_bytes_is_413(make_config, fake):
    client = create_app(make_config(max_body_bytes=2048)).test_client()
    response = post(client, {"messages": [{"role": "user", "content": "x" * 5000}]})
    assert response.status_code == 413
    assert response.json["error"]["code"] == "request_too_large"
    assert fake.chat_requests == []


def test_missing_credentials_is_503_naming_path_and_login(make_config, tmp_path, fake):
    missing = tmp_path / "nowhere" / "oauth_creds.json"
    client = create_app(make_config(qwen_oauth_creds=(missing,))).test_client()
    response = post(client, {"messages": USER})
    assert response.status_code == 503
    error = response.json["error"]
    assert error["code"] == "qwen_oauth_credentials_missing"
    assert str(missing) in error["message"]
    assert "auth login" in error["message"]


def test_unknown_route_and_wrong_method_are_json(client):
    response = client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"
    response = client.get("/v1/chat/completions")
    assert response.status_code == 405
    assert response.json["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("event", [
    '{"choices": 5}',
    '{"choices": [{"index": [1], "delta": {"tool_calls": [{"id": "a"}]}}]}',
])
def test_a_stream_chunk_of_an_odd_shape_ends_with_an_error_frame(client, fake, event):
    fake.script.append(reply_stream([chunk({"content": "a"}), event]))
    payloads = sse_payloads(post(client, {"messages": USER, "stream": True}))
    assert json.loads(payloads[-1])["error"]["type"] == "upstream_error"


def test_multi_line_data_events_are_re_encoded_on_one_line(client, fake):
    fake.script.append(lambda f, r: (
        "200 OK", [("Content-Type", "text/event-stream")],
        [b'data: {"id": "x", "object": "chat.completion.chunk",\ndata:  "choices": '
         b'[{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}\n\n',
         b"data: [DONE]\n\n"]))
    payloads = sse_payloads(post(client, {"messages": USER, "stream": True}))
    assert json.loads(payloads[0])["choices"][0]["delta"]["content"] == "hi"
    assert payloads[-1] == "[DONE]"


def test_metric_labels_stay_bounded_for_made_up_model_names(client, fake):
    post(client, {"model": "made-up-model-7f3a", "messages": USER})
    post(client, {"model": "qwen3-coder-plus", "messages": USER})
    text = client.get("/metrics").get_data(as_text=True)
    assert "made-up-model-7f3a" not in text
    assert 'model="other"' in text and 'model="coder-model"' in text


def test_upstream_comments_alone_do_not_hold_back_keepalives(make_config, fake):
    """OpenRouter sends `: OPENROUTER PROCESSING` while a model thinks: bytes, but nothing
    for the client, so the client still needs its pings."""
    import gevent

    def processing_then_answer(f, r):
        def body():
            for _ in range(12):
                yield b": OPENROUTER PROCESSING\n\n"
                gevent.sleep(0.05)
            for event in (chunk({"content": "ok"}), chunk({}, finish="stop")):
                yield f"data: {json.dumps(event)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return "200 OK", [("Content-Type", "text/event-stream")], body()

    fake.script.append(processing_then_answer)
    client = create_app(make_config(stream_keepalive=0.2)).test_client()
    response = post(client, {"messages": USER, "stream": True})
    frames = response.get_data().split(b"\n\n")
    assert frames.count(b": ping") >= 2  # ~0.6 s of comments, a ping every 0.2 s
    assert b"OPENROUTER" not in response.get_data()
    assert frames[-2] == b"data: [DONE]"


# --- the context guard --------------------------------------------------------------------

SMALL_WINDOW = {"qwen-oauth": {"coder-model": {"context_length": 3000, "max_output_tokens": 2000}}}


@pytest.fixture
def make_openai(make_config):
    import httpx2
    import openai

    clients: list = []

    def make(**config):
        app = create_app(make_config(**config))
        http = httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://localhost")
        clients.append(http)
        return openai.OpenAI(
            base_url="http://localhost/v1", api_key="x", http_client=http, max_retries=0
        )

    yield make
    for http in clients:
        http.close()


def test_a_prompt_over_the_window_is_openais_context_error_before_any_upstream_call(
    make_openai, fake
):
    import openai

    sdk = make_openai(model_info=SMALL_WINDOW)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(
            model="qwen3-coder-plus", messages=[{"role": "user", "content": "hello " * 4000}]
        )
    assert caught.value.status_code == 400
    assert caught.value.code == "context_length_exceeded"
    message = caught.value.body["message"]
    assert re.fullmatch(
        r"This model's maximum context length is 3000 tokens\. However, your messages "
        r"resulted in \d+ tokens\.",
        message,
    )
    assert int(re.search(r"resulted in (\d+)", message).group(1)) > 4000
    assert fake.chat_requests == []


def test_max_tokens_that_does_not_fit_is_lowered_and_reported(make_openai, fake):
    sdk = make_openai(model_info=SMALL_WINDOW)
    raw = sdk.chat.completions.with_raw_response.create(
        model="qwen3-coder-plus",
        messages=[{"role": "user", "content": "hello " * 1000}],
        max_tokens=32000,
    )
    sent = fake.chat_requests[-1]["body"]["max_tokens"]
    assert 1900 < sent < 2000  # 3000 less a prompt of a little over 1000 tokens
    assert raw.headers["X-Qwenproxy-Max-Tokens"] == str(sent)


def test_max_tokens_that_fits_is_sent_as_asked(make_openai, fake):
    sdk = make_openai(model_info=SMALL_WINDOW)
    raw = sdk.chat.completions.with_raw_response.create(
        model="qwen3-coder-plus", messages=USER, max_tokens=500
    )
    assert fake.chat_requests[-1]["body"]["max_tokens"] == 500
    assert "X-Qwenproxy-Max-Tokens" not in raw.headers


def test_guard_off_forwards_the_long_prompt(make_openai, fake):
    sdk = make_openai(model_info=SMALL_WINDOW, context_guard=False)
    sdk.chat.completions.create(
        model="qwen3-coder-plus", messages=[{"role": "user", "content": "hello " * 4000}]
    )
    assert len(fake.chat_requests) == 1


ROUTE = {
    "main": {"policy": "m", "elements": ["qwen-oauth:qwen3-coder-plus", "qwen-oauth:qwen-plus"]}
}


@pytest.mark.parametrize(
    "wording, window_in_message",
    [
        ("dashscope", True),
        ("dashscope-500", True),
        ("vllm", True),
        ("openrouter", True),
        ("413", False),
    ],
)
def test_upstream_length_refusals_become_the_context_error_without_failover(
    make_config, fake, wording, window_in_message
):
    from tests.api.test_anthropic import recording_app

    fake.context_window, fake.length_wording = 200, wording
    app, finished = recording_app(make_config, context_guard=False, failover_routes=ROUTE)
    response = post(
        app.test_client(), {"model": "main", "messages": [{"role": "user", "content": "x" * 500}]}
    )
    assert response.status_code == 400
    error = response.json["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["type"] == "invalid_request_error"
    window = 200 if window_in_message else 1_000_000  # else the table's coder-model window
    assert error["message"].startswith(f"This model's maximum context length is {window} tokens.")
    assert len(fake.chat_requests) == 1  # never a failover to the route's next element
    [ctx] = finished
    assert (ctx.status, ctx.error_code) == (400, "context_length_exceeded")


def test_a_route_skips_an_element_whose_window_is_too_small(make_config, fake):
    info = {
        "qwen-oauth": {
            "coder-model": {"context_length": 1000},
            "qwen-plus": {"context_length": 100000},
        }
    }
    app = create_app(make_config(model_info=info, failover_routes=ROUTE))
    response = post(
        app.test_client(),
        {"model": "main", "messages": [{"role": "user", "content": "hello " * 2000}]},
    )
    assert response.status_code == 200
    assert [r["body"]["model"] for r in fake.chat_requests] == ["qwen-plus"]
