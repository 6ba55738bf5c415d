"""The body of one upstream answer (`response.raw` of the shared `requests.Session`),
read straight off the socket after upstream/http/heads.py's `read_head`: `LeanBody` feeds
llhttp the bytes it reads, can wait for data with a timeout and come back empty-handed
(the SSE relay's keep-alives and departed-client checks need that), decodes the content
(gzip, zlib-wrapped or raw deflate), holds the caps on what an answer may make the proxy
keep (a whole non-stream answer, one line of an event stream), and hands a fully read
connection back to the pool, or closes it.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from requests.exceptions import (
    ChunkedEncodingError,
    ConnectionError,
    ContentDecodingError,
    ReadTimeout,
)

from qwenproxy.upstream.http.heads import RECV_SIZE, Answer, AnswerTooLarge, reason_of

# What one answer may make the proxy hold, decoded: a whole answer that is not an event
# stream (a chat completion, a model list), and one line of an event stream (one SSE
# `data:` line is one chunk of a streamed answer; a stream as a whole may run for hours).
MAX_ANSWER_BYTES = 64 * 1024 * 1024
MAX_EVENT_LINE_BYTES = 1024 * 1024


def _zlib_wrapped(head: bytes) -> bool:
    """Whether a `deflate` body starts with a zlib header (RFC 1950: method 8, window
    at most 32 KiB, the 16-bit header a multiple of 31) rather than raw deflate data
    (RFC 1951), which some servers send for `Content-Encoding: deflate`."""
    return head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0


class LeanBody:
    """`response.raw`: the body of one answer, read straight off the socket.

    `read_chunk(wait)` returns the next decoded bytes (b"" at the end), or None when
    `wait` seconds passed without data — the connection stays intact for the next call.
    A fully read body hands its connection to `release` (back to the pool) when it may be
    reused; `close()` before that closes the socket (a half-read answer cannot be reused)."""

    def __init__(
        self,
        conn: Any,
        release: Callable[[Any], None],
        answer: Answer,
        read_timeout: float | None,
    ) -> None:
        self._conn: Any = conn  # has .sock and .close(); None once released or closed
        self._release = release
        self._answer = answer
        self._read_timeout = read_timeout
        self._silence = 0.0  # seconds waited in a row without data (keep-alive waits)
        self._pending = b""
        self._decoder: Any = None
        self._deflate_head = b""  # the first bytes of a `deflate` body, until 2 are here
        self._fail_decoding = ""
        # Caps: the body's decoded bytes still allowed, or for an event stream the bytes
        # of the line under way (since its last line end).
        headers = answer.headers
        self._event_stream = "text/event-stream" in headers.get("content-type", "").lower()
        self._allowed = MAX_ANSWER_BYTES
        self._line = 0
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(47)  # gzip (or zlib), by the header it finds
        elif encoding == "deflate":
            self._decoder = "deflate"  # zlib-wrapped or raw: told by its first two bytes
        elif encoding not in ("", "identity"):
            self._fail_decoding = encoding
        if answer.complete and not answer.body:
            self._settle()

    # --- what requests and the backends call -----------------------------------------------

    def read_chunk(self, wait: float | None = None) -> bytes | None:
        """The next piece of the body (decoded); b"" at its end; None if `wait` seconds
        passed with nothing new."""
        if self._pending:
            out, self._pending = self._pending, b""
            return out
        answer = self._answer
        while True:
            if answer.body or answer.complete:
                pieces = answer.body
                data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                pieces.clear()
                out = self._decode(data, answer.complete)
                if out:
                    self._check_size(out)
                if answer.complete:
                    self._settle()
                if out or answer.complete:
                    return out
            if answer.broken:
                self.close()
                raise ChunkedEncodingError(f"the upstream sent a malformed body: {answer.broken}")
            data = self._recv(wait)
            if data is None:
                return None
            if data:
                answer.feed(data)
            elif not answer.end():
                self.close()
                raise ChunkedEncodingError("the upstream closed the connection mid-answer")

    def stream(self, amt: int | None = None, decode_content: bool = True) -> Iterator[bytes]:
        while True:
            chunk = self.read_chunk()
            if not chunk:
                return
            yield chunk

    def read(self, amt: int | None = None, decode_content: bool = True) -> bytes:
        parts: list[bytes] = []
        size = 0
        while amt is None or size < amt:
            chunk = self.read_chunk()
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        data = b"".join(parts)
        if amt is not None and len(data) > amt:
            data, self._pending = data[:amt], data[amt:] + self._pending
        return data

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._answer.complete = True  # nothing more is read

    def release_conn(self) -> None:
        if self._conn is not None:
            self.close()

    @property
    def closed(self) -> bool:
        return self._conn is None

    # --- reading ---------------------------------------------------------------------------

    def _recv(self, wait: float | None) -> bytes | None:
        conn = self._conn
        if conn is None:
            raise ConnectionError("the upstream answer was already closed")
        sock = conn.sock
        limit = self._read_timeout
        waiting = wait is not None and (limit is None or self._silence + wait < limit)
        if waiting:
            sock.settimeout(wait)
            started = time.monotonic()
        elif wait is not None and limit is not None:
            sock.settimeout(max(0.001, limit - self._silence))  # what is left of the limit
        try:
            data = sock.recv(RECV_SIZE)
            self._silence = 0.0
            return data
        except TimeoutError:
            if waiting:
                self._silence += time.monotonic() - started
                return None
            self.close()
            raise ReadTimeout(f"no data from upstream for {limit} s") from None
        except OSError as exc:
            self.close()
            raise ChunkedEncodingError(f"the upstream connection broke: {reason_of(exc)}") from None
        finally:
            if wait is not None and self._conn is not None:
                sock.settimeout(limit)

    def _check_size(self, out: bytes) -> None:
        if self._event_stream:
            self._check_lines(out)
            return
        self._allowed -= len(out)
        if self._allowed < 0:
            self.close()
            raise AnswerTooLarge(f"the upstream's answer is over {MAX_ANSWER_BYTES} bytes")

    def _check_lines(self, out: bytes) -> None:
        """Count the line under way across pieces. A line wholly inside a piece can only
        be over the cap when the piece itself is (a decompressed one, say): only then is
        every line of the piece measured."""
        text = out.replace(b"\r", b"\n") if b"\r" in out else out  # CR, LF or CRLF ends
        last = text.rfind(b"\n")
        if last < 0:
            longest = self._line = self._line + len(text)
        else:
            longest = self._line + text.find(b"\n")
            if len(text) > MAX_EVENT_LINE_BYTES:
                longest = max(longest, *map(len, text[:last].split(b"\n")))
            self._line = len(text) - last - 1
            longest = max(longest, self._line)
        if longest > MAX_EVENT_LINE_BYTES:
            self.close()
            raise AnswerTooLarge(
                f"the upstream sent an event-stream line over {MAX_EVENT_LINE_BYTES} bytes"
            )

    def _decode(self, data: bytes, done: bool) -> bytes:
        if self._fail_decoding:
            self.close()
            raise ContentDecodingError(f"unsupported Content-Encoding {self._fail_decoding!r}")
        if self._decoder is None:
            return data
        if self._decoder == "deflate":
            data = self._deflate_head + data
            if len(data) < 2 and not done:
                self._deflate_head = data
                return b""
            self._deflate_head = b""
            wrapped = len(data) >= 2 and _zlib_wrapped(data)
            self._decoder = zlib.decompressobj(15 if wrapped else -15)
        try:
            out = self._decoder.decompress(data)
            if done:
                out += self._decoder.flush()
                self._decoder = None
        except zlib.error:
            self.close()
            raise ContentDecodingError("the upstream sent a corrupt compressed body") from None
        return out

    def _settle(self) -> None:
        """The body ended and every byte of it was decoded and counted (an answer over a
        cap is never pooled): the connection goes back to the pool, or is closed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._answer.keep_alive and not self._fail_decoding:
            self._release(conn)
        else:
            conn.close()
