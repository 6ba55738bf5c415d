"""A chat-completions stream as Anthropic Messages stream events (message_start,
content blocks with thinking, text and input_json deltas, message_delta, message_stop)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from qwenproxy.doors.anthropic.answer import (
    error_body_from_openai,
    new_message_id,
    stop_reason_of,
    usage_of,
)
from qwenproxy.doors.anthropic.request import AnthropicRequest, new_tool_use_id
from qwenproxy.doors.tool_arguments import ArgumentStream
from qwenproxy.doors.translator import ChunkTranslator
from qwenproxy.pipeline.events import Finish, ToolCallDelta
from qwenproxy.sse import encode_event


def sse_event(name: str, payload: dict[str, Any]) -> bytes:
    return encode_event(name.encode(), orjson.dumps(payload))


@dataclass
class _ToolBlock:
    index: int  # the content block's index
    id: str
    name: str
    arguments: ArgumentStream = field(default_factory=ArgumentStream)
    started: bool = False
    pending: list[str] = field(default_factory=list)  # pieces before the name arrived
    closed: bool = False


class AnthropicStream(ChunkTranslator):
    """A chat-completions stream, chunk by chunk, as Anthropic's stream events:
    message_start, ping, then per content block content_block_start / _delta / _stop,
    then message_delta (stop_reason, usage) and message_stop.

    Blocks follow each other: a text block is closed before a tool_use block starts, and
    a tool_use block before the next one. Each tool's `input_json_delta` pieces join to
    one valid JSON object (see `ArgumentStream`)."""

    def __init__(self, request: AnthropicRequest) -> None:
        self.request = request
        self.id = new_message_id()
        self._next_index = 0
        self._text_index: int | None = None  # the open text block
        self._thinking_index: int | None = None  # the open thinking block
        self._held = ""  # leading blank text, held so that thinking can come first
        self._tools: dict[int, _ToolBlock] = {}  # by the upstream's tool-call index
        self._open_tool: _ToolBlock | None = None
        self._finish: Any = None
        self._matched_stop: Any = None
        self._usage: Any = None

    # --- StreamTranslator -------------------------------------------------------------

    def start(self) -> list[bytes]:
        message = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.request.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [
            sse_event("message_start", {"type": "message_start", "message": message}),
            self.ping()[0],
        ]

    def ping(self) -> list[bytes]:
        return [sse_event("ping", {"type": "ping"})]

    def _finished(self, finish: Finish) -> None:
        self._finish = finish.reason
        self._matched_stop = finish.stop_reason

    def done(self) -> list[bytes]:
        out = self._text_delta(self._held) if self._held else []  # only blank text came
        out.extend(self._close_open())
        for tool in self._tools.values():  # named never: still owed to the client
            if not tool.closed:
                out.extend(self._start_tool(tool))
                out.extend(self._close_tool(tool))
        reason, sequence = stop_reason_of(
            self._finish, self._matched_stop, self.request.stop_sequences, bool(self._tools)
        )
        out.append(
            sse_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": usage_of(self._usage),
                },
            )
        )
        out.append(sse_event("message_stop", {"type": "message_stop"}))
        return out

    def error(self, error: dict[str, Any]) -> list[bytes]:
        return [sse_event("error", error_body_from_openai(error))]

    # --- blocks -----------------------------------------------------------------------

    def _reasoning(self, text: str) -> list[bytes]:
        if not self.request.thinking:
            return []
        self._held = ""  # blank text before the thinking: Anthropic's answers start with it
        out: list[bytes] = []
        if self._thinking_index is None:
            self._thinking_index, out = self._open_block(
                {"type": "thinking", "thinking": "", "signature": ""}
            )
        out.append(
            self._delta(self._thinking_index, {"type": "thinking_delta", "thinking": text})
        )
        return out

    def _text(self, text: str) -> list[bytes]:
        if self.request.thinking and self._next_index == 0 and not text.strip():
            self._held += text
            return []
        if self._held:
            text, self._held = self._held + text, ""
        return self._text_delta(text)

    def _text_delta(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._text_index is None:
            self._text_index, out = self._open_block({"type": "text", "text": ""})
        out.append(self._delta(self._text_index, {"type": "text_delta", "text": text}))
        return out

    def _open_block(self, block: dict[str, Any]) -> tuple[int, list[bytes]]:
        """Close what is open, then start a content block: (its index, the events)."""
        out = self._close_open()
        index = self._take_index()
        event = {"type": "content_block_start", "index": index, "content_block": block}
        out.append(sse_event("content_block_start", event))
        return index, out

    def _tool_at(self, position: int) -> _ToolBlock | None:
        return self._tools.get(position)

    def _new_tool(self, position: int, call: ToolCallDelta) -> _ToolBlock:
        tool = _ToolBlock(self._take_index(), call.id or new_tool_use_id(), "")
        self._tools[position] = tool
        self._open_tool = tool
        return tool

    def _tool_piece(self, tool: _ToolBlock, piece: str) -> list[bytes]:
        return [self._json_delta(tool, piece)]

    def _start_tool(self, tool: _ToolBlock) -> list[bytes]:
        if tool.started:
            return []
        tool.started = True
        out = [
            sse_event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": tool.index,
                    "content_block": {
                        "type": "tool_use",
                        "id": tool.id,
                        "name": tool.name,
                        "input": {},
                    },
                },
            )
        ]
        out.extend(self._json_delta(tool, piece) for piece in tool.pending)
        tool.pending.clear()
        return out

    def _close_tool(self, tool: _ToolBlock) -> list[bytes]:
        out: list[bytes] = []
        closing = tool.arguments.close()
        if closing:
            out.append(self._json_delta(tool, closing))
        out.append(self._stop(tool.index))
        tool.closed = True
        return out

    def _close_open(self) -> list[bytes]:
        out: list[bytes] = []
        if self._thinking_index is not None:
            out.append(self._stop(self._thinking_index))
            self._thinking_index = None
        if self._text_index is not None:
            out.append(self._stop(self._text_index))
            self._text_index = None
        tool, self._open_tool = self._open_tool, None
        if tool is not None and not tool.closed:
            out.extend(self._start_tool(tool))  # a tool that never got a name
            out.extend(self._close_tool(tool))
        return out

    def _take_index(self) -> int:
        index, self._next_index = self._next_index, self._next_index + 1
        return index

    def _json_delta(self, tool: _ToolBlock, piece: str) -> bytes:
        return self._delta(tool.index, {"type": "input_json_delta", "partial_json": piece})

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> bytes:
        return sse_event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )

    @staticmethod
    def _stop(index: int) -> bytes:
        return sse_event("content_block_stop", {"type": "content_block_stop", "index": index})
