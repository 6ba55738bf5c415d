"""Anthropic Messages <-> chat completions, without HTTP: requests, answers, streams."""

from __future__ import annotations

import json

import pytest

from qwenproxy.doors.anthropic.answer import error_body_for, to_message
from qwenproxy.doors.anthropic.request import AnthropicRequest, to_chat_request
from qwenproxy.doors.anthropic.stream import AnthropicStream
from qwenproxy.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
)
from tests.fake_upstream import USAGE_CHUNK, chunk, completion


def translate(body, model_map=None):
    return to_chat_request(
        {"model": "claude-sonnet-4-6", "max_tokens": 64, **body}, model_map or {}
    )


def events(frames: list[bytes]) -> list[tuple[str, dict]]:
    out = []
    for frame in frames:
        name, data = frame.decode().split("\n", 1)
        assert name.startswith("event: ") and data.startswith("data: ") and data.endswith("\n\n")
        payload = json.loads(data[len("data: ") :])
        assert payload["type"] == name[len("event: ") :]
        out.append((payload["type"], payload))
    return out


def run_stream(chunks, request=None) -> list[tuple[str, dict]]:
    stream = AnthropicStream(request or AnthropicRequest({}, "claude-sonnet-4-6"))
    frames = stream.start()
    for c in chunks:
        frames += stream.chunk(c)
    frames += stream.done()
    return events(frames)


def assemble(evs) -> dict:
    """What an Anthropic client builds from the events (strictly: blocks one at a time)."""
    message = None
    open_index = None
    json_parts: dict[int, str] = {}
    for name, payload in evs:
        if name == "message_start":
            message = payload["message"]
        elif name == "content_block_start":
            assert open_index is None, "a block started before the previous one stopped"
            open_index = payload["index"]
            assert open_index == len(message["content"])
            message["content"].append(dict(payload["content_block"]))
        elif name == "content_block_delta":
            assert payload["index"] == open_index
            delta = payload["delta"]
            block = message["content"][open_index]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            else:
                json_parts[open_index] = json_parts.get(open_index, "") + delta["partial_json"]
        elif name == "content_block_stop":
            assert payload["index"] == open_index
            if open_index in json_parts:
                message["content"][open_index]["input"] = json.loads(json_parts[open_index])
            open_index = None
        elif name == "message_delta":
            message.update(payload["delta"])
            message["usage"].update(payload["usage"])
    assert open_index is None
    assert evs[-1][0] == "message_stop"
    return message


# --- requests -------------------------------------------------------------------------


def test_system_blocks_and_system_turns_become_one_leading_system_message():
    request = translate(
        {
            "system": [
                {"type": "text", "text": "You are terse."},
                {"type": "text", "text": "Answer in English."},
            ],
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "system", "content": "Never apologise."},
            ],
        }
    )
    messages = request.chat["messages"]
    assert messages[0] == {
        "role": "system",
        "content": "You are terse.\n\nAnswer in English.\n\nNever apologise.",
    }
    assert messages[1:] == [{"role": "user", "content": "hi"}]
    assert request.cache_markers is False


def test_content_blocks_become_parts_and_unknown_cache_control_types_are_dropped():
    request = translate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "<reminder>", "cache_control": {"type": "x"}},
                        {"type": "text", "text": "look"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"},
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}},
                    ],
                }
            ]
        }
    )
    assert request.chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<reminder>"},
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}},
                {"type": "image_url", "image_url": {"url": "https://x/a.png"}},
            ],
        }
    ]


def test_tool_use_and_tool_result_become_tool_calls_and_tool_messages():
    request = translate(
        {
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"c": 1}},
                        {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "sunny"}],
                        },
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_2",
                            "content": "clock broke",
                            "is_error": True,
                        },
                        {"type": "text", "text": "thanks"},
                    ],
                },
            ]
        }
    )
    assert request.chat["messages"][1:] == [
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"c":1}'},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "[tool error] clock broke"},
        {"role": "user", "content": "thanks"},
    ]


def test_an_assistant_turn_of_only_tool_calls_has_null_content():
    request = translate(
        {
            "messages": [
                {"role": "user", "content": "go"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "ls", "input": {}}],
                },
            ]
        }
    )
    assert request.chat["messages"][1]["content"] is None


def test_images_in_tool_results_follow_as_a_user_message():
    request = translate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [
                                {"type": "text", "text": "screenshot:"},
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/jpeg",
                                        "data": "AA",
                                    },
                                },
                            ],
                        }
                    ],
                }
            ]
        }
    )
    tool, user = request.chat["messages"]
    assert tool == {"role": "tool", "tool_call_id": "t1", "content": "screenshot:"}
    assert user["role"] == "user"
    assert user["content"][-1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/jpeg;base64,AA"},
    }


def test_tools_and_tool_choice_are_translated_and_server_tools_left_out():
    request = translate(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [
                {
                    "name": "Read",
                    "description": "Read a file",
                    "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}},
                },
                {"name": "mcp__x__y", "input_schema": {"type": "object"}, "defer_loading": True},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
            ],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        }
    )
    assert request.chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "Read",
                "description": "Read a file",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
            },
        },
        {"type": "function", "function": {"name": "mcp__x__y", "parameters": {"type": "object"}}},
    ]
    assert request.chat["tool_choice"] == "required"
    assert request.chat["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    "choice, expected",
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "Read"}, {"type": "function", "function": {"name": "Read"}}),
    ],
)
def test_tool_choice_values(choice, expected):
    request = translate(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"name": "Read", "input_schema": {"type": "object"}}],
            "tool_choice": choice,
        }
    )
    assert request.chat["tool_choice"] == expected


def test_empty_tools_means_no_tools():
    request = translate(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [],
            "tool_choice": {"type": "auto"},
        }
    )
    assert "tools" not in request.chat and "tool_choice" not in request.chat


def test_sampling_fields_are_kept_and_anthropic_only_fields_dropped():
    request = translate(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 32000,
            "temperature": 0.2,
            "top_p": 0.9,
            "stop_sequences": ["END"],
            "stream": True,
            "metadata": {"user_id": "u"},
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "output_config": {"effort": "high"},
            "context_management": {"edits": []},
        }
    )
    assert request.chat == {
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 32000,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["END"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert request.model == "claude-sonnet-4-6"
    assert request.stop_sequences == ("END",)


def test_vendor_model_maps_through_the_model_map_and_own_names_pass():
    mapped = translate(
        {"messages": [{"role": "user", "content": "x"}]}, {"claude-*": "dashscope:a"}
    )
    assert mapped.chat["model"] == "dashscope:a"
    own = to_chat_request(
        {"model": "dashscope:qwen-max", "messages": [{"role": "user", "content": "x"}]}, {}
    )
    assert own.chat["model"] == "dashscope:qwen-max"


# --- answers --------------------------------------------------------------------------


def test_a_completion_becomes_a_message_with_the_clients_model():
    message = to_message(
        completion("Hi there", usage={"prompt_tokens": 20, "completion_tokens": 5}),
        AnthropicRequest({}, "claude-sonnet-4-6"),
    )
    assert message["id"].startswith("msg_")
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["model"] == "claude-sonnet-4-6"
    assert message["content"] == [{"type": "text", "text": "Hi there"}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"] == {"input_tokens": 20, "output_tokens": 5}


def test_tool_calls_become_tool_use_blocks_with_parsed_input():
    body = completion(
        "",
        tool_calls=[
            {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": '{"x":1}'}},
            {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{oops"}},
        ],
    )
    message = to_message(body, AnthropicRequest({}, "m"))
    assert message["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "a", "input": {"x": 1}},
        {"type": "tool_use", "id": "call_2", "name": "b", "input": {"raw": "{oops"}},
    ]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    "finish, extra, expected",
    [
        ("stop", {}, ("end_turn", None)),
        ("length", {}, ("max_tokens", None)),
        ("tool_calls", {}, ("tool_use", None)),
        ("stop", {"stop_reason": "END"}, ("stop_sequence", "END")),
    ],
)
def test_stop_reasons(finish, extra, expected):
    body = completion("x")
    body["choices"][0].update(finish_reason=finish, **extra)
    message = to_message(body, AnthropicRequest({}, "m", ("END",)))
    assert (message["stop_reason"], message["stop_sequence"]) == expected


def test_cached_prompt_tokens_are_reported_as_cache_reads():
    usage = {
        "prompt_tokens": 100,
        "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 80},
    }
    message = to_message(completion("x", usage=usage), AnthropicRequest({}, "m"))
    assert message["usage"] == {
        "input_tokens": 20,
        "output_tokens": 5,
        "cache_read_input_tokens": 80,
    }


def test_cache_writes_are_reported_apart_and_left_out_of_input_tokens():
    # Model Studio's explicit-cache usage (its context-cache page): the 18,613 tokens
    # written to the cache are part of prompt_tokens; Anthropic counts them apart.
    usage = {
        "prompt_tokens": 18628,
        "completion_tokens": 344,
        "total_tokens": 18972,
        "prompt_tokens_details": {
            "text_tokens": 18628,
            "cache_creation_input_tokens": 18613,
            "cache_creation": {"ephemeral_5m_input_tokens": 18613},
            "cache_type": "ephemeral",
            "cached_tokens": 0,
        },
    }
    message = to_message(completion("x", usage=usage), AnthropicRequest({}, "m"))
    assert message["usage"] == {
        "input_tokens": 15,
        "output_tokens": 344,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 18613,
    }


def test_a_cache_write_count_beside_prompt_tokens_is_read_too():
    usage = {"prompt_tokens": 50, "completion_tokens": 1, "cache_creation_input_tokens": 40}
    message = to_message(completion("x", usage=usage), AnthropicRequest({}, "m"))
    assert message["usage"] == {
        "input_tokens": 10,
        "output_tokens": 1,
        "cache_creation_input_tokens": 40,
    }


def test_a_stream_reports_cache_reads_and_writes_in_message_delta():
    usage_chunk = {
        **USAGE_CHUNK,
        "usage": {
            "prompt_tokens": 3000,
            "completion_tokens": 9,
            "prompt_tokens_details": {"cached_tokens": 2048, "cache_creation_input_tokens": 900},
        },
    }
    evs = run_stream([chunk({"content": "hi"}), chunk({}, finish="stop"), usage_chunk])
    delta = next(payload for name, payload in evs if name == "message_delta")
    assert delta["usage"] == {
        "input_tokens": 52,
        "output_tokens": 9,
        "cache_read_input_tokens": 2048,
        "cache_creation_input_tokens": 900,
    }


def test_errors_take_anthropics_shape_and_type():
    assert error_body_for(InvalidRequestError("bad")) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad"},
    }
    assert error_body_for(RateLimitError("slow"))["error"]["type"] == "rate_limit_error"
    assert error_body_for(ServiceUnavailableError("x"))["error"]["type"] == "overloaded_error"


def test_a_prompt_too_long_is_worded_as_claude_code_knows_it_wherever_it_is_shaped():
    # (a slow answer's keep-alive path shapes its error here too, not only the handler)
    assert error_body_for(ContextLengthExceededError(5000, 3000)) == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "prompt is too long: 5000 tokens > 3000 maximum",
        },
    }


# --- streams --------------------------------------------------------------------------


def test_streamed_text_is_the_full_event_sequence():
    evs = run_stream(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, finish="stop"),
            USAGE_CHUNK,
        ]
    )
    assert [name for name, _ in evs] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    message = assemble(evs)
    assert message["content"] == [{"type": "text", "text": "Hello"}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"]["output_tokens"] == 3 and message["usage"]["input_tokens"] == 7


def tool_chunks(arguments_pieces, name="get_weather", call_id="call_1", index=0):
    first = {"index": index, "id": call_id, "type": "function", "function": {"name": name}}
    if arguments_pieces:
        first["function"]["arguments"] = arguments_pieces[0]
    chunks = [chunk({"tool_calls": [first]})]
    for piece in arguments_pieces[1:]:
        chunks.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    return chunks


@pytest.mark.parametrize(
    "pieces",
    [
        ['{"city": "Paris"}'],
        ["", '{"ci', 'ty"', ': "Pa', 'ris"}'],
        ['{"city": "Paris"}', '{"city": "Paris"}'],
    ],
)
def test_streamed_tool_arguments_join_to_valid_json(pieces):
    evs = run_stream(
        [
            chunk({"role": "assistant", "content": "Let me check."}),
            *tool_chunks(pieces),
            chunk({}, finish="tool_calls"),
        ]
    )
    message = assemble(evs)
    assert message["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    assert message["stop_reason"] == "tool_use"


def test_a_tool_call_without_arguments_gets_an_empty_object():
    evs = run_stream([*tool_chunks([], name="list"), chunk({}, finish="tool_calls")])
    assert assemble(evs)["content"][0]["input"] == {}


def test_several_tool_calls_are_blocks_one_after_the_other():
    evs = run_stream(
        [
            *tool_chunks(['{"a":', "1}"], name="one", call_id="c1", index=0),
            *tool_chunks(['{"b": 2}'], name="two", call_id="c2", index=1),
            chunk({}, finish="tool_calls"),
        ]
    )
    content = assemble(evs)["content"]
    assert [(b["id"], b["name"], b["input"]) for b in content] == [
        ("c1", "one", {"a": 1}),
        ("c2", "two", {"b": 2}),
    ]


def test_a_tool_name_that_arrives_late_still_starts_the_block_with_it():
    evs = run_stream(
        [
            chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"arguments": '{"a"'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"name": "late", "arguments": ":1}"}}]}),
            chunk({}, finish="tool_calls"),
        ]
    )
    assert assemble(evs)["content"] == [
        {"type": "tool_use", "id": "c1", "name": "late", "input": {"a": 1}}
    ]


def test_ping_and_error_events():
    stream = AnthropicStream(AnthropicRequest({}, "m"))
    assert events(stream.ping()) == [("ping", {"type": "ping"})]
    [(name, payload)] = events(stream.error({"message": "boom", "type": "upstream_error"}))
    assert name == "error"
    assert payload == {"type": "error", "error": {"type": "api_error", "message": "boom"}}


# --- cache_control markers --------------------------------------------------------------

EPHEMERAL = {"type": "ephemeral"}


def claude_code_body() -> dict:
    """Shaped like Claude Code's requests: marked system blocks, a marked tool definition
    and a marked last user turn ending in a tool result."""
    return {
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": EPHEMERAL},
            {"type": "text", "text": "<env>cwd=/repo</env>", "cache_control": EPHEMERAL},
        ],
        "tools": [
            {"name": "Read", "input_schema": {"type": "object"}},
            {"name": "Edit", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "read a.py"}]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": "print(1)",
                        "cache_control": EPHEMERAL,
                    },
                ],
            },
        ],
    }


def test_markers_sit_on_the_matching_parts_and_tools():
    request = translate(claude_code_body())
    messages = request.chat["messages"]
    assert messages[0] == {
        "role": "system",
        "content": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": EPHEMERAL},
            {"type": "text", "text": "<env>cwd=/repo</env>", "cache_control": EPHEMERAL},
        ],
    }
    assert messages[-1] == {
        "role": "tool",
        "tool_call_id": "toolu_1",
        "content": [{"type": "text", "text": "print(1)", "cache_control": EPHEMERAL}],
    }
    assert messages[1] == {"role": "user", "content": "read a.py"}  # unmarked: a string
    assert "cache_control" not in request.chat["tools"][0]
    assert request.chat["tools"][1]["cache_control"] == EPHEMERAL
    assert request.cache_markers is True


def test_marked_user_text_stays_a_part_and_a_ttl_is_not_forwarded():
    request = translate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "the whole repo",
                            "cache_control": {"type": "ephemeral", "ttl": "1h"},
                        }
                    ],
                }
            ]
        }
    )
    assert request.chat["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "the whole repo", "cache_control": EPHEMERAL}],
        }
    ]


def test_a_marker_inside_a_tool_results_content_marks_the_tool_message():
    request = translate(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [
                                {"type": "text", "text": "a"},
                                {"type": "text", "text": "b", "cache_control": EPHEMERAL},
                            ],
                        }
                    ],
                }
            ]
        }
    )
    assert request.chat["messages"] == [
        {
            "role": "tool",
            "tool_call_id": "t1",
            "content": [{"type": "text", "text": "a\nb", "cache_control": EPHEMERAL}],
        }
    ]


def test_a_marked_assistant_text_becomes_a_marked_part():
    request = translate(
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "hello", "cache_control": EPHEMERAL}],
                },
                {"role": "user", "content": "again"},
            ]
        }
    )
    assert request.chat["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "hello", "cache_control": EPHEMERAL}],
    }


def test_more_than_four_markers_keep_the_last_four():
    body = claude_code_body()  # 4 markers: 2 system blocks, 1 tool, 1 tool result
    body["messages"][0]["content"][0]["cache_control"] = EPHEMERAL  # a 5th, on a message
    body["tools"][0]["cache_control"] = EPHEMERAL  # a 6th, the earliest of all
    request = translate(body)
    chat = request.chat
    # Anthropic's prompt order: tools, then system, then messages; the two earliest go.
    assert [("cache_control" in tool) for tool in chat["tools"]] == [False, False]
    assert all("cache_control" in part for part in chat["messages"][0]["content"])
    assert chat["messages"][1]["content"] == [
        {"type": "text", "text": "read a.py", "cache_control": EPHEMERAL}
    ]
    assert "cache_control" in chat["messages"][-1]["content"][0]
