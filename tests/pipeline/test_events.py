"""Taking an OpenAI chunk apart into typed events, and a command's answer as events."""

from __future__ import annotations

import orjson

from qwenproxy.pipeline.context import RequestContext
from qwenproxy.pipeline.events import (
    ChatChunk,
    Done,
    Finish,
    ReasoningDelta,
    StreamError,
    TextDelta,
    ToolCallDelta,
    Usage,
    chunk_events,
    error_event,
)
from qwenproxy.pipeline.local_reply import local_reply


def test_a_chunk_gives_usage_then_its_first_choices_pieces_in_order():
    chunk = {
        "usage": {"prompt_tokens": 1},
        "choices": [
            {"index": 1, "delta": {"content": "other choice"}},
            {
                "index": 0,
                "delta": {
                    "reasoning_content": "think",
                    "content": "say",
                    "tool_calls": [
                        {"index": 2, "id": "t", "function": {"name": "f", "arguments": "{}"}},
                        "not a call",
                        {"function": "not an object"},
                    ],
                },
                "finish_reason": "stop",
                "stop_reason": "END",
            },
        ],
    }
    assert chunk_events(chunk) == [
        Usage({"prompt_tokens": 1}),
        ReasoningDelta("think"),
        TextDelta("say"),
        ToolCallDelta(2, "t", "f", "{}"),
        ToolCallDelta(0, None, None, None),
        Finish("stop", "END"),
    ]


def test_openrouters_reasoning_field_and_empty_pieces():
    chunk = {"choices": [{"delta": {"reasoning": "r", "content": ""}, "finish_reason": None}]}
    assert chunk_events(chunk) == [ReasoningDelta("r")]
    assert chunk_events({"choices": None}) == []


def test_an_error_body_becomes_a_stream_error_with_an_error_object():
    assert error_event({"error": {"message": "m", "type": "t"}}) == StreamError(
        {"message": "m", "type": "t"}
    )
    assert error_event({"error": "text"}) == StreamError(
        {"message": "text", "type": "upstream_error"}
    )


def _reply(stream: bool, translated: bool, include_usage: bool = False):
    ctx = RequestContext("c", "s", stream=stream, translated=translated)
    body = {"model": "m", "stream_options": {"include_usage": include_usage}}
    finished: list[bool] = []
    return local_reply(body, "done", ctx, lambda: finished.append(True)), ctx, finished


def test_a_commands_answer_streams_as_the_doors_events():
    answer, ctx, finished = _reply(stream=True, translated=True)
    batches = list(answer)
    assert ctx.outcome.backend == "local" and finished == [True]
    assert batches[1:] == [[Finish("stop")], [Done()]]
    (text,) = batches[0]
    assert text.text.endswith("done")

    answer, _, _ = _reply(stream=True, translated=False, include_usage=True)
    batches = list(answer)
    assert [type(b[0]) for b in batches] == [ChatChunk, ChatChunk, ChatChunk, Done]
    last = orjson.loads(batches[2][0].data)
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 0


def test_a_commands_answer_without_stream_is_a_chat_completion():
    answer, _, finished = _reply(stream=False, translated=False)
    assert answer["object"] == "chat.completion" and finished == []
    assert answer["choices"][0]["message"]["content"].endswith("done")
