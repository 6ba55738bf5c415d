"""The doors' schemas (chat completions, Anthropic Messages, Responses): what is rejected
(and with which `param` and words), what passes untouched."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qwenproxy.edge.schemas import (
    load_anthropic_messages_request,
    load_chat_completion_request,
    load_responses_request,
)
from qwenproxy.errors import InvalidRequestError

USER_HI = {"role": "user", "content": "hi"}


def body(**fields: Any) -> bytes:
    return json.dumps({"messages": [USER_HI], **fields}).encode()


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        pytest.param(b"not json", None, id="non-json"),
        pytest.param(b'{"messages": [', None, id="truncated-json"),
        pytest.param(b'[{"role": "user", "content": "hi"}]', None, id="json-array"),
        pytest.param(b'"a string"', None, id="json-string"),
        pytest.param(b"null", None, id="json-null"),
        pytest.param(b"", None, id="empty-body"),
        pytest.param(b"\xff\xfe{}", None, id="invalid-utf8-outside-strings"),
        pytest.param(
            b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',
            None,
            id="invalid-utf8-in-string",
        ),
        pytest.param(b"{}", "messages", id="missing-messages"),
        pytest.param(b'{"model": "m"}', "messages", id="missing-messages-with-model"),
        pytest.param(b'{"messages": []}', "messages", id="empty-messages"),
        pytest.param(b'{"messages": null}', "messages", id="messages-null"),
        pytest.param(b'{"messages": "hi"}', "messages", id="messages-a-string"),
        pytest.param(b'{"messages": ["hi"]}', "messages[0]", id="message-a-string"),
        pytest.param(b'{"messages": [[]]}', "messages[0]", id="message-a-list"),
        pytest.param(
            json.dumps({"messages": [USER_HI, {"role": "robot", "content": "x"}]}).encode(),
            "messages[1]",
            id="bad-role",
        ),
        pytest.param(
            json.dumps({"messages": [{"content": "x"}]}).encode(), "messages[0]", id="no-role"
        ),
        pytest.param(
            json.dumps({"messages": [{"role": "user", "content": None}]}).encode(),
            "messages[0]",
            id="user-content-null",
        ),
        pytest.param(
            json.dumps({"messages": [{"role": "user"}]}).encode(),
            "messages[0]",
            id="user-content-missing",
        ),
        pytest.param(
            json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(),
            "messages[0]",
            id="content-a-number",
        ),
        pytest.param(
            json.dumps({"messages": [{"role": "user", "content": ["text"]}]}).encode(),
            "messages[0]",
            id="content-part-not-an-object",
        ),
        pytest.param(
            json.dumps({"messages": [{"role": "user", "content": [{"text": "x"}]}]}).encode(),
            "messages[0]",
            id="content-part-without-type",
        ),
        pytest.param(body(stream="true"), "stream", id="stream-string-true"),
        pytest.param(body(stream=1), "stream", id="stream-one"),
        pytest.param(body(temperature="0.5"), "temperature", id="temperature-string"),
        pytest.param(body(temperature=True), "temperature", id="temperature-bool"),
        pytest.param(body(top_p="1"), "top_p", id="top-p-string"),
        pytest.param(body(max_tokens=1.5), "max_tokens", id="max-tokens-float"),
        pytest.param(body(max_tokens="100"), "max_tokens", id="max-tokens-string"),
        pytest.param(body(max_tokens=True), "max_tokens", id="max-tokens-bool"),
        pytest.param(
            body(max_completion_tokens=2.0), "max_completion_tokens", id="max-completion-float"
        ),
        pytest.param(body(n="2"), "n", id="n-string"),
        pytest.param(body(model=5), "model", id="model-number"),
        pytest.param(body(model=["qwen"]), "model", id="model-list"),
        pytest.param(body(stream_options="yes"), "stream_options", id="stream-options-string"),
        pytest.param(body(tools={"type": "function"}), "tools", id="tools-an-object"),
    ],
)
def test_malformed_body_is_rejected_with_param(raw: bytes, param: str | None) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        load_chat_completion_request(raw)
    error = caught.value
    assert error.status == 400
    assert error.param == param
    assert error.to_body()["error"]["param"] == param
    assert error.to_body()["error"]["type"] == "invalid_request_error"
    if param is not None:
        assert f"`{param}`" in error.message


def test_messages_for_missing_and_empty_messages_are_readable() -> None:
    with pytest.raises(InvalidRequestError, match=r"^`messages` is required$"):
        load_chat_completion_request(b"{}")
    with pytest.raises(InvalidRequestError, match=r"^`messages` must not be empty$"):
        load_chat_completion_request(b'{"messages": []}')
    with pytest.raises(InvalidRequestError, match="empty"):
        load_chat_completion_request(b"")
    with pytest.raises(InvalidRequestError, match="JSON object"):
        load_chat_completion_request(b"[]")


VALID_BODIES = [
    pytest.param({"messages": [USER_HI]}, id="minimal"),
    pytest.param(
        {
            "model": "qwen3-coder-plus",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": "really brief"},
                USER_HI,
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
            "top_p": 0.9,
            "max_tokens": 100,
            "max_completion_tokens": 200,
            "n": 1,
        },
        id="all-checked-fields",
    ),
    pytest.param(
        {
            "model": None,
            "messages": [USER_HI],
            "stream": None,
            "temperature": None,
            "max_tokens": None,
            "tools": None,
        },
        id="nulls-allowed",
    ),
    pytest.param(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
                    ],
                }
            ]
        },
        id="content-parts",
    ),
    pytest.param(
        {
            "messages": [USER_HI],
            "response_format": {"type": "json_object"},
            "parallel_tool_calls": False,
            "user": "user-1234",
            "seed": 42,
            "stop": ["\n\n"],
            "logit_bias": {"50256": -100},
            "metadata": {"nested": [1, {"deep": None}]},
        },
        id="unknown-fields",
    ),
    pytest.param(
        {
            "messages": [
                {"role": "user", "content": "weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "weather", "parameters": {"type": "object"}},
                }
            ],
            "tool_choice": "auto",
        },
        id="assistant-null-content-with-tool-calls",
    ),
]


@pytest.mark.parametrize("request_body", VALID_BODIES)
def test_valid_body_passes_through_untouched(request_body: dict[str, Any]) -> None:
    loaded = load_chat_completion_request(json.dumps(request_body).encode())
    assert loaded == request_body
    # Same keys, nothing added (no defaults injected), nothing dropped.
    assert set(loaded) == set(request_body)


def test_unknown_fields_keep_their_exact_values_and_types() -> None:
    raw = body(response_format={"type": "json_object"}, parallel_tool_calls=False, user="u-1")
    loaded = load_chat_completion_request(raw)
    assert loaded["response_format"] == {"type": "json_object"}
    assert loaded["parallel_tool_calls"] is False
    assert loaded["user"] == "u-1"


def test_integer_valued_float_temperature_and_unicode_content() -> None:
    raw = json.dumps({"messages": [{"role": "user", "content": "café ☕"}], "temperature": 1})
    loaded = load_chat_completion_request(raw.encode("utf-8"))
    assert loaded["messages"][0]["content"] == "café ☕"
    assert loaded["temperature"] == 1


# --- the Anthropic Messages API ------------------------------------------------------


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": True}, "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}, "stream"),
        ({"messages": [{"role": "user", "content": "x"}], "system": 5}, "system"),
        ({"messages": [{"role": "user", "content": "x"}], "model": 5}, "model"),
    ],
)
def test_bad_anthropic_bodies_are_invalid_requests_naming_the_field(body, param):
    with pytest.raises(InvalidRequestError) as caught:
        load_anthropic_messages_request(json.dumps(body).encode())
    assert caught.value.param == param


ANTHROPIC_USER = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "`messages` must be a non-empty list"),
        ({"messages": None}, "`messages` must be a non-empty list"),
        ({"messages": ["x"]}, "`messages[0]` must be an object"),
        ({"messages": [{"content": "x"}]}, "`messages[0].role` must be a string"),
        (
            {"messages": [{"role": "user", "content": [{"text": "x"}]}]},
            "`messages[0].content` must be a string or a list of blocks with a `type`",
        ),
        ({"messages": ANTHROPIC_USER, "system": [1]}, "`system` must be a string or a list "
         "of text blocks"),
        ({"messages": ANTHROPIC_USER, "stop_sequences": [1]}, "`stop_sequences` must be a list "
         "of strings"),
        ({"messages": ANTHROPIC_USER, "tools": {}}, "`tools` must be a list"),
        ({"messages": ANTHROPIC_USER, "tools": [1]}, "`tools[0]` must be an object"),
        ({"messages": ANTHROPIC_USER, "tools": [{"input_schema": {}}]}, "`tools[0].name` must "
         "be a string"),
        ({"messages": ANTHROPIC_USER, "top_k": 1.5}, "`top_k` must be an integer"),
    ],
)
def test_anthropic_errors_keep_their_words(body, message):
    with pytest.raises(InvalidRequestError) as caught:
        load_anthropic_messages_request(json.dumps(body).encode())
    assert caught.value.message == message


def test_anthropic_unknown_fields_and_server_tools_pass_through_untouched():
    body = {
        "messages": ANTHROPIC_USER,
        "metadata": {"user_id": "u"},
        "tools": [{"type": "web_search_20250305", "name": 5}],
        "system": "",
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    }
    assert load_anthropic_messages_request(json.dumps(body).encode()) == body


# --- the Responses API ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": "hi", "conversation": "conv_1"}, "conversation"),
        ({"input": 3}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": "hi", "max_output_tokens": "5"}, "max_output_tokens"),
        ({"input": "hi", "background": True}, "background"),
    ],
)
def test_bad_or_stateful_responses_requests_are_400_naming_the_field(body, param):
    with pytest.raises(InvalidRequestError) as caught:
        load_responses_request(json.dumps(body).encode())
    assert caught.value.param == param


@pytest.mark.parametrize(
    "body, message",
    [
        ({"input": "hi", "background": True}, "`background` is not supported: this proxy "
         "stores no responses."),
        ({"input": "hi", "prompt": {"id": "p"}}, "`prompt` is not supported: this proxy stores "
         "no responses or conversations. Send the whole conversation in `input` (as with "
         "`store: false`)."),
        ({"input": ["x"]}, "`input[0]` must be an object"),
        ({"input": "hi", "instructions": 5}, "`instructions` must be a string"),
        ({"input": "hi", "tools": [{"type": "function"}]}, "`tools[0].name` must be a string"),
        (
            {"input": "hi", "tools": [{"type": "namespace", "name": "crm",
                                       "tools": [{"type": "custom", "name": ""}]}]},
            "`tools[0].tools[0].name` must be a string",
        ),
        ({"input": "hi", "parallel_tool_calls": "yes"}, "`parallel_tool_calls` must be true or "
         "false"),
        ({"input": "hi", "top_p": "1"}, "`top_p` must be a number"),
    ],
)
def test_responses_errors_keep_their_words(body, message):
    with pytest.raises(InvalidRequestError) as caught:
        load_responses_request(json.dumps(body).encode())
    assert caught.value.message == message


def test_responses_unknown_fields_and_empty_stateful_ones_pass_through_untouched():
    body = {
        "input": [{"type": "reasoning", "summary": []}, {"role": "user", "content": "hi"}],
        "store": False,
        "previous_response_id": None,
        "background": False,
        "tools": [{"type": "web_search"}],
        "reasoning": {"effort": "low"},
    }
    assert load_responses_request(json.dumps(body).encode()) == body
