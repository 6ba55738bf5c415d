"""Server-sent events: an incremental decoder for upstream streams and the one place that
frames what every door sends (data frames, named events, comments, [DONE]).

The decoder follows the WHATWG event-stream rules that matter for chat streams: `data:`
lines joined by newlines, blank line ends an event, `:` lines are comments, CRLF allowed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: bytes
    event: str | None = None


def encode_data(payload: bytes) -> bytes:
    """Frame one JSON payload (which never holds a raw newline) as an SSE data event."""
    return b"data: " + payload + b"\n\n"


def encode_event(name: bytes, payload: bytes) -> bytes:
    """A named event (`event: <name>`) of one JSON payload without raw newlines."""
    return b"event: " + name + b"\ndata: " + payload + b"\n\n"


def encode_comment(text: bytes) -> bytes:
    """A comment line (clients ignore it; keeps idle connections open)."""
    return b": " + text + b"\n\n"


DONE_DATA = b"[DONE]"
DONE_FRAME = encode_data(DONE_DATA)
KEEPALIVE_FRAME = encode_comment(b"ping")


class SSEDecoder:
    """Turns a byte stream, fed in arbitrary pieces, into complete `SSEEvent`s."""

    __slots__ = ("_buffer", "_data", "_event")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if self._buffer:
            chunk = self._buffer + chunk
        if b"\r" in chunk:
            # Normalise CRLF and lone CR line ends; a trailing CR may be half of a CRLF.
            if chunk.endswith(b"\r"):
                chunk, self._buffer = chunk[:-1], b"\r"
            else:
                self._buffer = b""
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            lines = chunk.split(b"\n")
            self._buffer = lines.pop() + self._buffer
        else:
            lines = chunk.split(b"\n")
            self._buffer = lines.pop()
        events: list[SSEEvent] = []
        for line in lines:
            self._take_line(line, events)
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: dispatch what is pending even without its closing blank line."""
        events: list[SSEEvent] = []
        if self._buffer:
            self._take_line(self._buffer.rstrip(b"\r"), events)
            self._buffer = b""
        self._take_line(b"", events)
        return events

    def _take_line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent(b"\n".join(self._data), self._event))
            self._data = []
            self._event = None
            return
        if line[0] == 0x3A:  # ':' comment / keep-alive
            return
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
