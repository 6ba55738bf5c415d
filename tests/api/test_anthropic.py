"""POST /v1/messages through the Flask app, driven by the official `anthropic` SDK (over a
WSGI transport) and by raw requests, against the fake upstream."""

from __future__ import annotations

import json
import re

import anthropic
import httpx2
import pytest

from qwenproxy import create_app
from tests.fake_upstream import (
    USAGE_CHUNK,
    chunk,
    completion,
    reply_endless_stream,
    reply_error,
    reply_json,
    reply_stream,
)

MODEL = "claude-sonnet-4-6"
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture
def make_sdk(make_config):
    clients: list[httpx2.Client] = []

    def make(key: str = "anything", **config) -> anthropic.Anthropic:
        app = create_app(make_config(**config))
        http = httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://localhost")
        clients.append(http)
        return anthropic.Anthropic(
            base_url="http://localhost", api_key=key, http_client=http, max_retries=0
        )

    yield make
    for http in clients:
        http.close()


@pytest.fixture
def sdk(make_sdk) -> anthropic.Anthropic:
    return make_sdk()


def ask(sdk, text="hi", **kwargs):
    kwargs.setdefault("messages", [{"role": "user", "content": text}])
    return sdk.messages.create(model=MODEL, max_tokens=1024, **kwargs)


def tool_call_stream(pieces: list[str]):
    """The fake answers with one get_weather call, its arguments sent in `pieces`."""
    first = {
        "index": 0,
        "id": "call_w1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": pieces[0]},
    }
    events = [chunk({"role": "assistant", "content": None}), chunk({"tool_calls": [first]})]
    events += [
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        for piece in pieces[1:]
    ]
    return reply_stream([*events, chunk({}, finish="tool_calls"), USAGE_CHUNK])


def tool_call_json(arguments: str):
    from tests.fake_upstream import completion, reply_json

    return reply_json(
        completion(
            None,
            tool_calls=[
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        )
    )


# --- plain text -----------------------------------------------------------------------


def test_text_answer_through_the_sdk(sdk, fake):
    message = ask(sdk, "Say hello")
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from fake"
    assert message.model == MODEL
    assert message.stop_reason == "end_turn"
    assert message.id.startswith("msg_")
    assert message.usage.input_tokens == 7 and message.usage.output_tokens == 3
    sent = fake.chat_requests[-1]["body"]
    assert sent["messages"] == [{"role": "user", "content": "Say hello"}]
    assert sent["max_tokens"] == 1024
    assert sent["model"] == "coder-model"  # no map: the default model


def test_system_prompt_reaches_upstream_as_one_system_message(sdk, fake):
    ask(
        sdk,
        system=[
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Answer in English."},
        ],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    )
    messages = fake.chat_requests[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == "You are terse.\n\nAnswer in English."


def test_multi_turn_history_is_forwarded_in_order(sdk, fake):
    ask(
        sdk,
        messages=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello Ada."}]},
            {"role": "user", "content": "What is my name?"},
        ],
    )
    assert fake.chat_requests[-1]["body"]["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]


def test_streamed_text_assembles_in_the_sdk(sdk, fake):
    with sdk.messages.stream(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from fake"
    assert final.content[0].text == "Hello from fake"
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 7 and final.usage.output_tokens == 3
    assert fake.chat_requests[-1]["body"]["stream_options"] == {"include_usage": True}


def test_raw_stream_has_the_anthropic_event_sequence(make_config, fake):
    client = create_app(make_config()).test_client()
    response = client.post(
        "/v1/messages?beta=true",
        json={
            "model": MODEL,
            "max_tokens": 10,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["X-Qwenproxy-Backend"] == "qwen-oauth"
    names = [
        line[len("event: ") :]
        for line in response.get_data(as_text=True).splitlines()
        if line.startswith("event: ")
    ]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_usage_reports_cache_reads(sdk, fake):
    from tests.fake_upstream import completion, reply_json

    usage = {
        "prompt_tokens": 120,
        "completion_tokens": 9,
        "total_tokens": 129,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    fake.script.append(reply_json(completion("ok", usage=usage)))
    message = ask(sdk)
    assert message.usage.input_tokens == 20
    assert message.usage.cache_read_input_tokens == 100
    assert message.usage.output_tokens == 9


# --- tools ----------------------------------------------------------------------------


def follow_up(question: str, tool_use, result: str) -> list[dict]:
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": [tool_use.model_dump(exclude_none=True)]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": tool_use.id,
                    "content": result,
                }
            ],
        },
    ]


def assert_upstream_saw_the_tool_round_trip(fake, result: str) -> None:
    messages = fake.chat_requests[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    call = messages[1]["tool_calls"][0]
    assert call["id"] == "call_w1" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_w1", "content": result}


@pytest.mark.parametrize(
    "arguments", ['{"city": "Paris"}', '{"city":"Paris"}'], ids=["spaced", "compact"]
)
def test_tool_use_round_trip(sdk, fake, arguments):
    fake.script.append(tool_call_json(arguments))
    message = ask(sdk, "Weather in Paris?", tools=[WEATHER_TOOL])
    assert message.stop_reason == "tool_use"
    [tool_use] = message.content
    assert tool_use.type == "tool_use" and tool_use.name == "get_weather"
    assert tool_use.input == {"city": "Paris"}
    sent_tools = fake.chat_requests[-1]["body"]["tools"]
    assert sent_tools[0]["function"]["parameters"] == WEATHER_TOOL["input_schema"]

    answer = ask(
        sdk, tools=[WEATHER_TOOL], messages=follow_up("Weather in Paris?", tool_use, "Sunny, 21 C")
    )
    assert answer.content[0].text == "Hello from fake"
    assert_upstream_saw_the_tool_round_trip(fake, "Sunny, 21 C")


@pytest.mark.parametrize(
    "pieces",
    [
        ['{"city": "Paris"}'],
        ["", '{"', "city", '": "Pa', 'ris"', "}"],
        ['{"city": "Paris"}', "", '{"city": "Paris"}'],
    ],
    ids=["whole", "split-oddly", "repeated-whole"],
)
def test_streamed_tool_use_round_trip(sdk, fake, pieces):
    fake.script.append(tool_call_stream(pieces))
    with sdk.messages.stream(
        model=MODEL,
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [tool_use] = final.content
    assert tool_use.type == "tool_use" and tool_use.id == "call_w1"
    assert tool_use.input == {"city": "Paris"}

    with sdk.messages.stream(
        model=MODEL,
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=follow_up("Weather in Paris?", tool_use, "Sunny"),
    ) as stream:
        assert stream.get_final_text() == "Hello from fake"
    assert_upstream_saw_the_tool_round_trip(fake, "Sunny")


def test_streamed_tool_use_with_empty_arguments_gets_an_empty_object(sdk, fake):
    fake.script.append(tool_call_stream([""]))
    with sdk.messages.stream(
        model=MODEL,
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "x"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].input == {}


def test_tool_result_errors_are_noted_for_the_model(sdk, fake):
    ask(
        sdk,
        tools=[WEATHER_TOOL],
        messages=[
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "is_error": True,
                        "content": [{"type": "text", "text": "city is required"}],
                    }
                ],
            },
        ],
    )
    tool = fake.chat_requests[-1]["body"]["messages"][-1]
    assert tool["role"] == "tool" and "city is required" in tool["content"]
    assert "error" in tool["content"].lower()


def claude_code_body() -> dict:
    return {
        "model": MODEL,
        "max_tokens": 32000,
        "stream": False,
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [
            {"role": "system", "content": "Extra system note."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}],
            },
        ],
        "tools": [{**WEATHER_TOOL, "defer_loading": True}],
        "metadata": {"user_id": "user_abc"},
        "thinking": {"type": "enabled", "budget_tokens": 4000},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
    }


def post_claude_code(client, body: dict):
    return client.post(
        "/v1/messages?beta=true",
        json=body,
        headers={
            "x-api-key": "anything",
            "anthropic-beta": "made-up-2099-01-01",
            "anthropic-version": "2023-06-01",
        },
    )


def test_claude_code_shaped_request_is_accepted_and_its_markers_forwarded(make_config, fake):
    client = create_app(make_config()).test_client()
    response = post_claude_code(client, claude_code_body())
    assert response.status_code == 200, response.json
    sent = fake.chat_requests[-1]["body"]
    marker = {"type": "ephemeral"}
    assert sent["messages"][0] == {  # qwen-oauth takes markers (as qwen-code sends them)
        "role": "system",
        "content": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": marker},
            {"type": "text", "text": "Extra system note."},
        ],
    }
    assert sent["messages"][1] == {
        "role": "user",
        "content": [{"type": "text", "text": "hi", "cache_control": marker}],
    }
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    for dropped in ("metadata", "thinking", "output_config", "context_management"):
        assert dropped not in sent


def test_a_backend_switched_off_gets_the_request_without_markers(make_config, fake):
    client = create_app(make_config(cache_markers={"qwen-oauth": False})).test_client()
    response = post_claude_code(client, claude_code_body())
    assert response.status_code == 200, response.json
    sent = fake.chat_requests[-1]["body"]
    assert sent["messages"][:2] == [
        {"role": "system", "content": "You are Claude Code.\n\nExtra system note."},
        {"role": "user", "content": "hi"},
    ]
    assert "cache_control" not in json.dumps(sent)


# --- models, commands -------------------------------------------------------------------


def test_vendor_model_is_mapped_through_anthropic_model_map(make_sdk, fake, fake_b):
    sdk = make_sdk(
        dashscope_api_keys=("sk-dash-1",),
        dashscope_base_url=fake_b.api_base,
        anthropic_model_map={"claude-*": "dashscope:qwen3-coder-flash"},
    )
    message = ask(sdk)
    assert message.model == MODEL
    assert fake.chat_requests == []
    assert fake_b.chat_requests[-1]["body"]["model"] == "qwen3-coder-flash"


def test_our_own_model_names_pass_through(sdk, fake):
    sdk.messages.create(
        model="qwen-oauth:qwen-max", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert fake.chat_requests[-1]["body"]["model"] == "qwen-max"


def test_in_chat_command_is_answered_locally(sdk, fake):
    message = ask(sdk, "!/hello")
    assert message.content[0].text.startswith("[qwenproxy]")
    assert message.usage.input_tokens == 0
    with sdk.messages.stream(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "!/hello"}]
    ) as stream:
        assert stream.get_final_text().startswith("[qwenproxy]")
    assert fake.chat_requests == []


# --- errors ---------------------------------------------------------------------------


def test_bad_key_is_a_401_in_anthropics_shape(make_sdk, make_config, fake):
    sdk = make_sdk(key="wrong", proxy_api_keys=("right",))
    with pytest.raises(anthropic.AuthenticationError) as caught:
        ask(sdk)
    assert caught.value.status_code == 401
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "Invalid API key for this proxy."},
    }
    good = make_sdk(key="right", proxy_api_keys=("right",))
    assert ask(good).content[0].text == "Hello from fake"


def test_bearer_key_is_accepted_too(make_config, fake):
    client = create_app(make_config(proxy_api_keys=("right",))).test_client()
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    assert (
        client.post(
            "/v1/messages", json=body, headers={"Authorization": "Bearer right"}
        ).status_code
        == 200
    )
    assert client.post("/v1/messages", json=body, headers={"x-api-key": "right"}).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"model": "x", "max_tokens": 5}',
        b'{"messages": [{"role": "user", "content": 5}]}',
    ],
)
def test_bad_body_is_a_400_in_anthropics_shape(make_config, fake, raw):
    client = create_app(make_config()).test_client()
    response = client.post("/v1/messages", data=raw, content_type="application/json")
    assert response.status_code == 400
    assert response.json["type"] == "error"
    assert response.json["error"]["type"] == "invalid_request_error"
    assert response.json["error"]["message"]
    assert fake.chat_requests == []


def test_sdk_raises_bad_request_for_a_bad_body(sdk, fake):
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.create(model=MODEL, max_tokens=5, messages=[])
    assert caught.value.body["error"]["type"] == "invalid_request_error"


def test_upstream_rate_limit_is_a_429_rate_limit_error(sdk, fake):
    fake.script.append(reply_error(429, "slow down", headers=[("Retry-After", "7")]))
    with pytest.raises(anthropic.RateLimitError) as caught:
        ask(sdk)
    assert caught.value.body["error"]["type"] == "rate_limit_error"
    assert caught.value.response.headers["Retry-After"] == "7"


def test_too_large_body_is_request_too_large(make_config, fake):
    client = create_app(make_config(max_body_bytes=100)).test_client()
    response = client.post(
        "/v1/messages",
        json={
            "model": MODEL,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x" * 500}],
        },
    )
    assert response.status_code == 413
    assert response.json["error"]["type"] == "request_too_large"


def test_chat_completions_keeps_the_openai_error_shape(make_config, fake):
    client = create_app(make_config()).test_client()
    response = client.post(
        "/v1/chat/completions", data=b"not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert set(response.json) == {"error"}
    assert response.json["error"]["type"] == "invalid_request_error"


def test_error_mid_stream_is_an_error_event(sdk, fake):
    fake.script.append(reply_stream([chunk({"content": "partial"})], done=False))
    with pytest.raises(anthropic.APIStatusError) as caught:
        with sdk.messages.stream(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            for _ in stream:
                pass
    assert caught.value.body["type"] == "error"
    assert "closed the stream" in caught.value.body["error"]["message"]


def test_keepalive_becomes_a_ping_event(make_config, fake):
    events = [chunk({"content": "a"}), chunk({}, finish="stop")]
    fake.script.append(reply_stream(events, delay=0.3))
    client = create_app(make_config(stream_keepalive=0.1)).test_client()
    response = client.post(
        "/v1/messages",
        json={
            "model": MODEL,
            "max_tokens": 5,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
    )
    text = response.get_data(as_text=True)
    assert text.count("event: ping") >= 2  # the opening one and at least one keep-alive
    assert "\n: ping" not in text  # no bare SSE comment: Anthropic clients expect events
    assert text.rstrip().endswith('data: {"type":"message_stop"}')


# --- the other routes -------------------------------------------------------------------


CHINESE = "通义千问是阿里云研发的大语言模型，能够回答问题、创作文字，还能编写代码。"


def test_count_tokens_counts_with_qwens_vocabulary_and_template(sdk, fake):
    # 37: the dashscope 2.0.2 wheel's own QwenTokenizer on the rendered prompt
    # "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\n" + CHINESE +
    # "<|im_end|>\n" (40 with the "<|im_start|>assistant\n" that follows, 3 tokens);
    # see tests/pipeline/guards/test_tokens.py for how those numbers were made.
    result = sdk.messages.count_tokens(
        model=MODEL, system="You are terse.", messages=[{"role": "user", "content": CHINESE}]
    )
    assert result.input_tokens == 37
    assert fake.chat_requests == []


def test_count_tokens_of_an_english_turn(sdk):
    # 26: the same tokenizer on "<|im_start|>user\n" + the text + "<|im_end|>\n".
    text = (
        "The quick brown fox jumps over the lazy dog. Proxies forward requests; they don't "
        "answer them."
    )
    result = sdk.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": text}])
    assert result.input_tokens == 26


SMALL_WINDOW = {"qwen-oauth": {"coder-model": {"context_length": 3000}}}


def test_a_prompt_over_the_window_is_anthropics_prompt_too_long(make_sdk, fake):
    sdk = make_sdk(model_info=SMALL_WINDOW)
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.create(
            model="qwen3-coder-plus",
            max_tokens=32000,
            stream=True,  # as Claude Code asks (the SDK wants a stream for 32,000 tokens)
            messages=[{"role": "user", "content": "hello " * 4000}],
        )
    assert caught.value.status_code == 400
    error = caught.value.body["error"]
    assert error["type"] == "invalid_request_error"
    assert re.fullmatch(r"prompt is too long: \d+ tokens > 3000 maximum", error["message"])
    assert fake.chat_requests == []


def test_claude_codes_max_tokens_is_lowered_to_what_fits(make_sdk, fake):
    sdk = make_sdk(model_info=SMALL_WINDOW)
    raw = sdk.messages.with_raw_response.create(
        model="qwen3-coder-plus",
        max_tokens=20000,
        messages=[{"role": "user", "content": "hello " * 1000}],
    )
    sent = fake.chat_requests[-1]["body"]["max_tokens"]
    assert 1900 < sent < 2000
    assert raw.headers["X-Qwenproxy-Max-Tokens"] == str(sent)


def test_an_upstream_length_refusal_is_anthropics_prompt_too_long(make_sdk, fake):
    fake.context_window, fake.length_wording = 200, "dashscope"
    sdk = make_sdk(context_guard=False)
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk.messages.create(
            model="qwen3-coder-plus",
            max_tokens=1000,
            messages=[{"role": "user", "content": "x" * 500}],
        )
    message = caught.value.body["error"]["message"]
    assert re.fullmatch(r"prompt is too long: \d+ tokens > 200 maximum", message)


def test_hello_probe_answers_without_a_key(make_config):
    client = create_app(make_config(proxy_api_keys=("k",))).test_client()
    assert client.head("/api/hello").status_code == 200
    assert client.get("/api/hello").status_code == 200


# --- accounting and disconnects -----------------------------------------------------------


def recording_app(make_config, **config):
    """An app whose pipeline also hands each finished request's context to a list."""
    app = create_app(make_config(**config))
    service = app.extensions["qwenproxy"].completions
    finish = service._finish
    finished: list = []

    def spy(ctx):
        finished.append(ctx)
        finish(ctx)

    service._finish = spy
    return app, finished


def test_a_finished_stream_is_recorded_as_a_success(make_config, fake):
    app, finished = recording_app(make_config)
    body = {
        "model": MODEL,
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    app.test_client().post("/v1/messages", json=body).get_data()
    [ctx] = finished
    assert ctx.status == 200 and ctx.error_code is None
    assert ctx.usage == USAGE_CHUNK["usage"]


def test_a_client_leaving_mid_stream_closes_the_upstream(make_config, fake):
    fake.script.append(reply_endless_stream(0.01))
    app, finished = recording_app(make_config)
    body = {
        "model": MODEL,
        "max_tokens": 5,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    response = app.test_client().post("/v1/messages", json=body, buffered=False)
    frames = iter(response.response)
    assert b"message_start" in next(frames)
    while b"content_block_delta" not in next(frames):
        pass
    response.close()
    assert fake.stream_closed.wait(2.0)
    [ctx] = finished
    assert ctx.status == 499


THINKING_STREAM = [
    chunk({"role": "assistant", "reasoning_content": "The user greets; "}),
    chunk({"reasoning_content": "answer kindly."}),
    chunk({"content": "Hello"}),
    chunk({"content": "!"}, finish="stop"),
    USAGE_CHUNK,
]


def stream_with_thinking(sdk, fake, events):
    """(block types as content_block_start announced them, the final message)."""
    fake.script.append(reply_stream(events))
    with sdk.messages.stream(
        model=MODEL,
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "hi"}],
    ) as stream:
        starts = [e.content_block.type for e in stream if e.type == "content_block_start"]
        return starts, stream.get_final_message()


def test_streamed_reasoning_becomes_a_thinking_block_when_thinking_is_on(sdk, fake):
    starts, message = stream_with_thinking(sdk, fake, THINKING_STREAM)
    assert starts == ["thinking", "text"]
    assert message.content[0].type == "thinking"
    assert message.content[0].thinking == "The user greets; answer kindly."
    assert message.content[1].text == "Hello!"
    assert "thinking" not in fake.chat_requests[-1]["body"]  # the setting stays here


def test_reasoning_is_left_out_when_the_client_did_not_ask_for_thinking(sdk, fake):
    fake.script.append(reply_stream(THINKING_STREAM))
    with sdk.messages.stream(
        model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        message = stream.get_final_message()
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello!"


def test_reasoning_of_a_whole_answer_comes_first_as_thinking(sdk, fake):
    answer = completion("Hello!")
    answer["choices"][0]["message"]["reasoning_content"] = "Be brief."
    fake.script.append(reply_json(answer))
    message = ask(sdk, thinking={"type": "adaptive"})
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Be brief."
    assert message.content[1].text == "Hello!"


def test_blank_text_before_the_reasoning_does_not_push_thinking_second(sdk, fake):
    events = [chunk({"role": "assistant", "content": "\n\n"}), *THINKING_STREAM]
    starts, message = stream_with_thinking(sdk, fake, events)
    assert starts == ["thinking", "text"]
    assert message.content[1].text == "Hello!"


def test_an_answer_of_blank_text_only_still_arrives(sdk, fake):
    events = [chunk({"role": "assistant", "content": "\n"}), chunk({}, finish="stop")]
    _, message = stream_with_thinking(sdk, fake, events)
    assert [(block.type, block.text) for block in message.content] == [("text", "\n")]


def test_failover_sends_markers_only_to_the_attempts_whose_backend_takes_them(
    make_config, fake, fake_b
):
    config = make_config(
        dashscope_api_keys=("sk-dash-1",),
        dashscope_base_url=fake_b.api_base,
        failover_routes={
            "main": {
                "policy": "m",
                "elements": ["dashscope:qwen3-coder-plus", "qwen-oauth:qwen3-coder-plus"],
            }
        },
        cache_markers={"qwen-oauth": False},
    )
    fake_b.script.append(reply_error(503, "busy"))
    client = create_app(config).test_client()
    body = {**claude_code_body(), "model": "main"}
    response = post_claude_code(client, body)
    assert response.status_code == 200, response.json
    first = fake_b.chat_requests[-1]["body"]  # dashscope: markers on
    assert first["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    second = fake.chat_requests[-1]["body"]  # qwen-oauth, switched off here: none
    assert "cache_control" not in json.dumps(second)
    assert second["messages"][0]["content"] == "You are Claude Code.\n\nExtra system note."
