"""The typed events of a streamed answer. The relay (pipeline/relay.py) reads the
upstream's SSE once and hands on, per upstream read, a list of these: for the chat door
`ChatChunk`s (the OpenAI chunk as it goes on the wire, so chat clients get the upstream's
own bytes), for the translated doors the pieces of each chunk (`TextDelta`,
`ReasoningDelta`, `ToolCallDelta`, `Usage`, `Finish`); both get `KeepAlive`, `Done` and
`StreamError`. `chunk_events` is the one place that takes an OpenAI chunk apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class ChatChunk:
    """A chat.completion.chunk's JSON, as the chat door sends it (one line)."""

    data: bytes


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of a tool call: `position` is the call's index in the choice (filled in by
    the relay where the upstream omits it); `arguments` as the upstream sent it."""

    position: int
    id: str | None
    name: str | None
    arguments: Any


@dataclass(slots=True)
class Usage:
    usage: dict[str, Any]


@dataclass(slots=True)
class Finish:
    reason: Any
    stop_reason: Any = None  # vLLM's matched stop sequence, where the upstream says it


@dataclass(slots=True)
class StreamError:
    """The stream's end by failure: an OpenAI error object (`message`, `type`, `code`)."""

    error: dict[str, Any]


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A silence upstream: the door sends its keep-alive."""


@dataclass(frozen=True, slots=True)
class Done:
    """The stream's normal end."""


KEEP_ALIVE = KeepAlive()
DONE = Done()

Event = (
    ChatChunk
    | TextDelta
    | ReasoningDelta
    | ToolCallDelta
    | Usage
    | Finish
    | StreamError
    | KeepAlive
    | Done
)


def reasoning_text(message: dict[str, Any]) -> str:
    """A thinking model's reasoning in a message or delta: `reasoning_content` (DashScope,
    vLLM, DeepSeek) or `reasoning` (OpenRouter)."""
    text = message.get("reasoning_content")
    if not isinstance(text, str) or not text:
        text = message.get("reasoning")
    return text if isinstance(text, str) else ""


def chunk_events(chunk: dict[str, Any], out: list[Any] | None = None) -> list[Any]:
    """The typed pieces of one chat.completion.chunk, in the order a client reads them:
    usage, then the first choice's reasoning, text, tool calls and finish. Appended to
    `out` when given."""
    if out is None:
        out = []
    usage = chunk.get("usage")
    if usage:
        out.append(Usage(usage))
    for choice in chunk.get("choices") or ():
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            reasoning = reasoning_text(delta)
            if reasoning:
                out.append(ReasoningDelta(reasoning))
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.append(TextDelta(text))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out.append(_tool_call(call))
        if choice.get("finish_reason"):
            out.append(Finish(choice["finish_reason"], choice.get("stop_reason")))
    return out


def _tool_call(call: dict[str, Any]) -> ToolCallDelta:
    function = call.get("function")
    if not isinstance(function, dict):
        function = {}
    name = function.get("name")
    return ToolCallDelta(
        call["index"] if isinstance(call.get("index"), int) else 0,
        call.get("id"),
        name if isinstance(name, str) else None,
        function.get("arguments"),
    )


def error_event(payload: dict[str, Any]) -> StreamError:
    """The StreamError of an `{"error": ...}` body (an upstream's event or ours)."""
    error = payload.get("error")
    if not isinstance(error, dict):
        error = {"message": str(error), "type": "upstream_error"}
    return StreamError(error)
