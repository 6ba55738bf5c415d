"""The Responses API <-> chat completions, without HTTP: requests, answers, streams."""

from __future__ import annotations

import json

import pytest

from qwenproxy.doors.responses.answer import to_response
from qwenproxy.doors.responses.request import flat_tool_name, to_chat_request
from qwenproxy.doors.responses.stream import ResponsesStream
from qwenproxy.errors import InvalidRequestError
from tests.fake_upstream import USAGE_CHUNK, chunk, completion

CODEX_TOOLS = [
    {
        "type": "function",
        "name": "shell",
        "description": "Runs a shell command",
        "strict": False,
        "parameters": {"type": "object", "properties": {"command": {"type": "array"}}},
    },
    {
        "type": "namespace",
        "name": "mcp__github__",
        "description": "GitHub tools",
        "tools": [
            {
                "type": "function",
                "name": "create_issue",
                "description": "Open an issue",
                "strict": False,
                "parameters": {"type": "object", "properties": {"title": {"type": "string"}}},
            }
        ],
    },
    {"type": "web_search", "external_web_access": False},
]


def translate(body, model_map=None):
    return to_chat_request({"model": "gpt-5-codex", **body}, model_map or {})


def events(frames: list[bytes]) -> list[dict]:
    out = []
    for frame in frames:
        name, data = frame.decode().split("\n", 1)
        payload = json.loads(data[len("data: ") :])
        assert name == f"event: {payload['type']}"
        out.append(payload)
    return out


def run_stream(chunks, request=None) -> list[dict]:
    stream = ResponsesStream(request or translate({"input": "hi"}))
    frames = stream.start()
    for c in chunks:
        frames += stream.chunk(c)
    frames += stream.done()
    evs = events(frames)
    assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
    return evs


# --- requests -------------------------------------------------------------------------


def test_a_string_input_and_instructions():
    request = translate({"input": "hi", "instructions": "Be terse."})
    assert request.chat["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "hi"},
    ]
    assert request.model == "gpt-5-codex"
    assert "model" not in request.chat  # a vendor name, no map: the default model


def test_codex_items_with_ids_and_developer_role():
    request = translate(
        {
            "input": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "role": "developer",
                    "content": [{"type": "input_text", "text": "You are Codex."}],
                },
                {
                    "type": "message",
                    "id": "msg_2",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "<environment_context/>"},
                        {"type": "input_text", "text": "fix the bug"},
                    ],
                },
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
            ],
            "store": False,
            "reasoning": {"effort": "medium", "summary": "auto"},
            "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "abc",
            "client_metadata": {"x": "y"},
            "parallel_tool_calls": False,
        }
    )
    assert request.chat == {
        "messages": [
            {"role": "system", "content": "You are Codex."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<environment_context/>"},
                    {"type": "text", "text": "fix the bug"},
                ],
            },
        ],
        "parallel_tool_calls": False,
    }


def test_function_calls_and_outputs_become_tool_calls_and_tool_messages():
    request = translate(
        {
            "input": [
                {"role": "user", "content": "list files"},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Sure."}],
                },
                {
                    "type": "function_call",
                    "id": "fc_1",
                    "call_id": "call_1",
                    "name": "shell",
                    "arguments": '{"command":["ls"]}',
                },
                {
                    "type": "function_call",
                    "call_id": "call_2",
                    "name": "create_issue",
                    "namespace": "mcp__github__",
                    "arguments": "{}",
                },
                {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
                {
                    "type": "function_call_output",
                    "call_id": "call_2",
                    "output": [{"type": "input_text", "text": "#12"}],
                },
            ]
        }
    )
    assert request.chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Sure.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "shell", "arguments": '{"command":["ls"]}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "mcp__github__create_issue", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"},
        {"role": "tool", "tool_call_id": "call_2", "content": "#12"},
    ]


def test_tools_are_flattened_and_hosted_tools_left_out():
    request = translate({"input": "hi", "tools": CODEX_TOOLS, "tool_choice": "auto"})
    assert request.chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "shell",
                "description": "Runs a shell command",
                "parameters": {"type": "object", "properties": {"command": {"type": "array"}}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "mcp__github__create_issue",
                "description": "Open an issue\n\n(mcp__github__: GitHub tools)",
                "parameters": {"type": "object", "properties": {"title": {"type": "string"}}},
            },
        },
    ]
    assert request.chat["tool_choice"] == "auto"
    assert request.tool_of("mcp__github__create_issue") == (
        "mcp__github__",
        "create_issue",
        "function",
    )


def test_flat_tool_names_stay_within_64_characters():
    assert flat_tool_name("crm", "find") == "crm__find"
    long = flat_tool_name("n" * 40, "t" * 40)
    assert len(long) == 64 and long == flat_tool_name("n" * 40, "t" * 40)


def test_sampling_fields_and_text_format():
    request = translate(
        {
            "input": "hi",
            "max_output_tokens": 500,
            "temperature": 0.1,
            "top_p": 0.5,
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "out",
                    "schema": {"type": "object"},
                    "strict": True,
                }
            },
            "stream": True,
        }
    )
    assert request.chat["max_tokens"] == 500
    assert request.chat["temperature"] == 0.1 and request.chat["top_p"] == 0.5
    assert request.chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "out", "schema": {"type": "object"}, "strict": True},
    }
    assert request.chat["stream_options"] == {"include_usage": True}
    json_object = translate({"input": "hi", "text": {"format": {"type": "json_object"}}})
    assert json_object.chat["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
        ({}, "input"),
    ],
)
def test_requests_only_the_translation_can_refuse_are_400_naming_the_field(body, param):
    # (the body's shape is the schema's: tests/test_schemas.py)
    with pytest.raises(InvalidRequestError) as caught:
        to_chat_request(body, {})
    assert caught.value.param == param


# --- answers --------------------------------------------------------------------------


def test_a_completion_becomes_a_response_object():
    response = to_response(completion("Hi there"), translate({"input": "hi"}))
    assert response["id"].startswith("resp_") and response["object"] == "response"
    assert response["status"] == "completed" and response["model"] == "gpt-5-codex"
    [item] = response["output"]
    assert item["type"] == "message" and item["role"] == "assistant"
    assert item["content"][0]["type"] == "output_text" and item["content"][0]["text"] == "Hi there"
    assert response["usage"]["input_tokens"] == 7
    assert response["usage"]["output_tokens"] == 3
    assert response["usage"]["total_tokens"] == 10


def test_tool_calls_become_function_call_items_with_their_namespace():
    body = completion(
        "",
        tool_calls=[
            {
                "id": "call_9",
                "type": "function",
                "function": {"name": "mcp__github__create_issue", "arguments": ""},
            },
        ],
    )
    response = to_response(body, translate({"input": "hi", "tools": CODEX_TOOLS}))
    [item] = response["output"]
    assert item["type"] == "function_call" and item["call_id"] == "call_9"
    assert item["name"] == "create_issue" and item["namespace"] == "mcp__github__"
    assert item["arguments"] == "{}"


def test_a_truncated_answer_is_incomplete():
    body = completion("cut")
    body["choices"][0]["finish_reason"] = "length"
    response = to_response(body, translate({"input": "hi"}))
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}


def test_custom_tools_round_trip_as_custom_tool_calls():
    tools = [
        {
            "type": "custom",
            "name": "apply_patch",
            "description": "Patch files",
            "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"},
        }
    ]
    request = translate({"input": "hi", "tools": tools})
    function = request.chat["tools"][0]["function"]
    assert function["name"] == "apply_patch"
    assert function["parameters"]["required"] == ["input"]
    assert "start: x" in function["description"]
    body = completion(
        "",
        tool_calls=[
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "apply_patch", "arguments": '{"input": "*** Begin Patch"}'},
            }
        ],
    )
    [item] = to_response(body, request)["output"]
    assert item["type"] == "custom_tool_call" and item["input"] == "*** Begin Patch"
    back = translate(
        {
            "input": [
                {
                    "type": "custom_tool_call",
                    "call_id": "c1",
                    "name": "apply_patch",
                    "input": "*** Begin Patch",
                },
                {"type": "custom_tool_call_output", "call_id": "c1", "output": "done"},
            ],
            "tools": tools,
        }
    )
    assert back.chat["messages"][0]["tool_calls"][0]["function"]["arguments"] == json.dumps(
        {"input": "*** Begin Patch"}, separators=(",", ":")
    )
    assert back.chat["messages"][1] == {"role": "tool", "tool_call_id": "c1", "content": "done"}


# --- streams --------------------------------------------------------------------------


def test_streamed_text_is_the_responses_event_sequence():
    evs = run_stream(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, finish="stop"),
            USAGE_CHUNK,
        ]
    )
    assert [e["type"] for e in evs] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert evs[0]["response"]["status"] == "in_progress"
    assert evs[6]["text"] == "Hello"
    final = evs[-1]["response"]
    assert final["status"] == "completed" and final["id"] == evs[0]["response"]["id"]
    assert final["output"][0]["content"][0]["text"] == "Hello"
    assert final["usage"]["total_tokens"] == 10


def test_streamed_tool_calls_have_argument_deltas_that_join_to_json():
    request = translate({"input": "hi", "tools": CODEX_TOOLS})
    evs = run_stream(
        [
            chunk({"content": "Running."}),
            chunk(
                {
                    "tool_calls": [
                        {"index": 0, "id": "call_1", "function": {"name": "shell", "arguments": ""}}
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"comm'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'and": ["ls"]}'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_2",
                            "function": {
                                "name": "mcp__github__create_issue",
                                "arguments": '{"title": "x"}',
                            },
                        }
                    ]
                }
            ),
            chunk({}, finish="tool_calls"),
        ],
        request,
    )
    added = [e for e in evs if e["type"] == "response.output_item.added"]
    assert [e["item"]["type"] for e in added] == ["message", "function_call", "function_call"]
    deltas = "".join(
        e["delta"]
        for e in evs
        if e["type"] == "response.function_call_arguments.delta" and e["output_index"] == 1
    )
    assert json.loads(deltas) == {"command": ["ls"]}
    done = [e for e in evs if e["type"] == "response.output_item.done"]
    assert done[0]["item"]["type"] == "message"
    assert done[1]["item"]["arguments"] == '{"command": ["ls"]}'
    assert done[2]["item"]["name"] == "create_issue"
    assert done[2]["item"]["namespace"] == "mcp__github__"
    final = evs[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call", "function_call"]
    # every item is done before the next is added
    order = [(e["type"], e.get("output_index")) for e in evs if "output_item" in e["type"]]
    assert order == [
        ("response.output_item.added", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.output_item.done", 1),
        ("response.output_item.added", 2),
        ("response.output_item.done", 2),
    ]


def test_a_failure_mid_stream_is_response_failed():
    stream = ResponsesStream(translate({"input": "hi"}))
    frames = stream.start() + stream.chunk(chunk({"content": "par"}))
    frames += stream.error(
        {"message": "upstream broke", "type": "upstream_error", "code": "upstream_error"}
    )
    last = events(frames)[-1]
    assert last["type"] == "response.failed"
    assert last["response"]["status"] == "failed"
    assert last["response"]["error"] == {"code": "upstream_error", "message": "upstream broke"}
