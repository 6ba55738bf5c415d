"""Reading the chat pipeline's own SSE frames back, for the doors that speak another wire
format: each frame becomes one call on a `StreamTranslator`, whose output is sent instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import orjson

log = logging.getLogger(__name__)

DATA_PREFIX = b"data: "
DONE_DATA = b"[DONE]"


class StreamTranslator(Protocol):
    """Turns a chat-completions stream into another format's SSE frames."""

    def start(self) -> list[bytes]: ...

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]: ...

    def ping(self) -> list[bytes]: ...

    def done(self) -> list[bytes]: ...

    def error(self, error: dict[str, Any]) -> list[bytes]: ...


def first_choice(completion: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(choice, message) of a chat.completion's first choice; empty dicts when absent."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    return choice, message


def reasoning_text(message: dict[str, Any]) -> str:
    """A thinking model's reasoning in a message or delta: `reasoning_content` (DashScope,
    vLLM, DeepSeek) or `reasoning` (OpenRouter)."""
    text = message.get("reasoning_content")
    if not isinstance(text, str) or not text:
        text = message.get("reasoning")
    return text if isinstance(text, str) else ""


class ChunkTranslator:
    """The part every translator shares: walk a chat chunk's first choice and hand its
    reasoning, text and tool-call pieces to `_reasoning` / `_text` / `_tool_call`; note
    usage and the finish."""

    _usage: dict[str, Any] | None = None
    _finish: str | None = None

    def _reasoning(self, text: str) -> list[bytes]:
        return []  # a door that has no place for reasoning leaves it out

    def _text(self, text: str) -> list[bytes]:
        raise NotImplementedError

    # A tool call's pieces: each translator keeps its tools by the call's `index` and says
    # how one is opened, started (once its name is known) and how an arguments piece leaves.
    def _tool_at(self, position: int) -> Any:
        raise NotImplementedError

    def _close_open(self) -> list[bytes]:
        raise NotImplementedError

    def _new_tool(self, position: int, call: dict[str, Any]) -> Any:
        raise NotImplementedError

    def _start_tool(self, tool: Any) -> list[bytes]:
        raise NotImplementedError

    def _tool_piece(self, tool: Any, piece: str) -> list[bytes]:
        raise NotImplementedError

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        position = call.get("index") if isinstance(call.get("index"), int) else 0
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        tool = self._tool_at(position)
        if tool is None:
            out.extend(self._close_open())
            tool = self._new_tool(position, call)
        elif tool.closed:
            log.warning("dropping arguments for tool call %d after it was closed", position)
            return out
        if not tool.name and isinstance(function.get("name"), str):
            tool.name = function["name"]
        piece = tool.arguments.feed(function.get("arguments"))
        if not tool.started and tool.name:
            out.extend(self._start_tool(tool))
        if piece:
            if tool.started:
                out.extend(self._tool_piece(tool, piece))
            else:
                tool.pending.append(piece)
        return out

    def _finished(self, choice: dict[str, Any]) -> None:
        self._finish = choice["finish_reason"]

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            reasoning = reasoning_text(delta)
            if reasoning:
                out.extend(self._reasoning(reasoning))
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.extend(self._text(text))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out.extend(self._tool_call(call))
            if choice.get("finish_reason"):
                self._finished(choice)
        return out


def translate_frames(frames: Iterator[bytes], translator: StreamTranslator) -> Iterator[bytes]:
    """The translated stream. The pipeline's frames come one per item (`data: <chunk>`,
    `: ping`, `data: [DONE]`, or `data: {"error": ...}` as the last one); a buffer keeps
    this correct if one ever spans items. The pipeline's stream is read to its end (it
    ends right after its last frame) so that it records the request as finished; closing
    this generator early (the client left) closes the pipeline's too."""
    finished = False
    try:
        yield from translator.start()
        buffer = b""
        for item in frames:
            if finished:
                continue
            buffer = buffer + item if buffer else item
            while b"\n\n" in buffer and not finished:
                frame, buffer = buffer.split(b"\n\n", 1)
                out, finished = _translate(frame, translator)
                yield from out
        if not finished:
            yield from translator.error(
                {"message": "The stream ended before it finished.", "type": "upstream_error"}
            )
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def _translate(frame: bytes, translator: StreamTranslator) -> tuple[Iterable[bytes], bool]:
    if not frame.startswith(DATA_PREFIX):
        return (translator.ping() if frame.startswith(b":") else ()), False
    data = frame[len(DATA_PREFIX) :]
    if data == DONE_DATA:
        return translator.done(), True
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        return translator.error(
            {"message": "The proxy could not read a stream event.", "type": "upstream_error"}
        ), True
    if "error" in payload and not payload.get("choices"):
        error = payload["error"]
        if not isinstance(error, dict):
            error = {"message": str(error), "type": "upstream_error"}
        return translator.error(error), True
    return translator.chunk(payload), False
