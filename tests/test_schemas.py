"""load_chat_completion_request: what is rejected (and with which `param`), what passes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qwenproxy.errors import InvalidRequestError
from qwenproxy.schemas import load_chat_completion_request

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
