"""The translated doors' side of a stream: a `StreamTranslator` turns the pipeline's typed
events (pipeline/events.py) into another wire format's SSE frames, and
`translate_events` runs one over a stream. Also the small readers of a chat answer that
both translations share.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from qwenproxy.pipeline.events import (
    Done,
    Finish,
    KeepAlive,
    ReasoningDelta,
    StreamError,
    TextDelta,
    ToolCallDelta,
    Usage,
    chunk_events,
    reasoning_text,
)

log = logging.getLogger(__name__)

__all__ = ["ChunkTranslator", "StreamTranslator", "reasoning_text", "translate_events"]


class StreamTranslator(Protocol):
    """Turns a chat-completions stream's events into another format's SSE frames."""

    def start(self) -> list[bytes]: ...

    def take(self, events: Iterable[Any]) -> tuple[list[bytes], bool]: ...

    def error(self, error: dict[str, Any]) -> list[bytes]: ...


def first_choice(completion: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(choice, message) of a chat.completion's first choice; empty dicts when absent."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    return choice, message




class ChunkTranslator:
    """The part every translator shares: take a batch of events and hand reasoning, text
    and tool-call pieces to `_reasoning` / `_text` / `_tool_call`; note usage and the
    finish; keep-alive, the end and a failure go to `ping` / `done` / `error`."""

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

    def _new_tool(self, position: int, call: ToolCallDelta) -> Any:
        raise NotImplementedError

    def _start_tool(self, tool: Any) -> list[bytes]:
        raise NotImplementedError

    def _tool_piece(self, tool: Any, piece: str) -> list[bytes]:
        raise NotImplementedError

    def _tool_call(self, call: ToolCallDelta) -> list[bytes]:
        out: list[bytes] = []
        position = call.position
        tool = self._tool_at(position)
        if tool is None:
            out.extend(self._close_open())
            tool = self._new_tool(position, call)
        elif tool.closed:
            log.warning("dropping arguments for tool call %d after it was closed", position)
            return out
        if not tool.name and call.name is not None:
            tool.name = call.name
        piece = tool.arguments.feed(call.arguments)
        if not tool.started and tool.name:
            out.extend(self._start_tool(tool))
        if piece:
            if tool.started:
                out.extend(self._tool_piece(tool, piece))
            else:
                tool.pending.append(piece)
        return out

    def _finished(self, finish: Finish) -> None:
        self._finish = finish.reason

    def ping(self) -> list[bytes]:
        raise NotImplementedError

    def done(self) -> list[bytes]:
        raise NotImplementedError

    def error(self, error: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError

    def take(self, events: Iterable[Any]) -> tuple[list[bytes], bool]:
        """The frames for one batch of events, and whether the stream is over (Done or
        StreamError: later events are not read)."""
        out: list[bytes] = []
        for event in events:
            kind = type(event)
            if kind is TextDelta:
                out.extend(self._text(event.text))
            elif kind is ReasoningDelta:
                out.extend(self._reasoning(event.text))
            elif kind is ToolCallDelta:
                out.extend(self._tool_call(event))
            elif kind is Usage:
                self._usage = event.usage
            elif kind is Finish:
                self._finished(event)
            elif kind is KeepAlive:
                out.extend(self.ping())
            elif kind is Done:
                out.extend(self.done())
                return out, True
            elif kind is StreamError:
                out.extend(self.error(event.error))
                return out, True
        return out, False

    def chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        """The frames for one chat.completion.chunk (its events, taken apart)."""
        return self.take(chunk_events(chunk))[0]


ENDED_EARLY = {"message": "The stream ended before it finished.", "type": "upstream_error"}


def translate_events(
    batches: Iterator[list[Any]], translator: StreamTranslator
) -> Iterator[bytes]:
    """The translated stream: one write per batch of the pipeline's events. The
    pipeline's stream is read to its end (it ends right after its last event) so that it
    records the request as finished; closing this generator early (the client left)
    closes the pipeline's too. A stream that stops with neither Done nor an error ends
    with the translator's error."""
    finished = False
    try:
        yield b"".join(translator.start())
        for batch in batches:
            if finished:
                continue
            out, finished = translator.take(batch)
            if out:
                yield b"".join(out)
        if not finished:
            yield b"".join(translator.error(dict(ENDED_EARLY)))
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
