"""The HTTP/1.1 wire format of the upstream transport (services/transport.py): request
heads, answer heads, and answer bodies (length, chunked or close-delimited; gzip or
deflate) read straight off a socket by `LeanBody`, which can wait for data and come back
empty-handed, and which caps what an answer may make the proxy hold."""

from __future__ import annotations

import re
import socket
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from requests.exceptions import (
    ChunkedEncodingError,
    ConnectionError,
    ContentDecodingError,
    InvalidHeader,
    ReadTimeout,
    RequestException,
)
from requests.structures import CaseInsensitiveDict

RECV_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024  # status line + headers
MAX_CHUNK_LINE = 4096
WAIT_CHECK_SECONDS = 1.0  # how often a long wait for an answer asks `while_waiting`
# What one answer may make the proxy hold, decoded: a whole answer that is not an event
# stream (a chat completion, a model list), and one line of an event stream (one SSE
# `data:` line is one chunk of a streamed answer; a stream as a whole may run for hours).
MAX_ANSWER_BYTES = 64 * 1024 * 1024
MAX_EVENT_LINE_BYTES = 1024 * 1024
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
BAD_HEADER_CHARS = re.compile(r"[\r\n\x00]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class AnswerTooLarge(RequestException):
    """The answer went over MAX_ANSWER_BYTES, or one line of an event stream over
    MAX_EVENT_LINE_BYTES; its connection is closed, never pooled."""


def transfer_chunked(value: str) -> bool:
    """Whether a Transfer-Encoding header (a comma list, RFC 9112 section 6.1) frames the
    body in chunks. Only `chunked` is decoded: the proxy sends no `TE`, so any other
    transfer coding is an answer it cannot read (ValueError), and `chunked` must be the
    final coding. An empty header is no transfer coding."""
    codings = [c.strip().lower() for c in value.split(",") if c.strip()]
    if not codings:
        return False
    if any(c != "chunked" for c in codings) or len(codings) > 1:
        raise ValueError(f"an unsupported Transfer-Encoding {value.strip()[:60]!r}")
    return True


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
        method: str,
        status: int,
        headers: CaseInsensitiveDict,
        rest: bytearray,
        keep_alive: bool,
        read_timeout: float | None,
    ) -> None:
        self._conn: Any = conn  # has .sock and .close(); None once released or closed
        self._release = release
        self._buf = rest
        self._read_timeout = read_timeout
        self._silence = 0.0  # seconds waited in a row without data (keep-alive waits)
        self._pending = b""
        self._decoder: Any = None
        self._deflate_head = b""  # the first bytes of a `deflate` body, until 2 are here
        self._fail_decoding = ""
        self._chunk_left = 0  # >0 data bytes left; 0 size line next; -1 CRLF; -2 trailers
        self._done = False
        self._keep = keep_alive
        self._length: int | None = None
        # Caps: the body's decoded bytes still allowed, or for an event stream the bytes
        # of the line under way (since its last line end).
        self._event_stream = "text/event-stream" in headers.get("content-type", "").lower()
        self._allowed = MAX_ANSWER_BYTES
        self._line = 0
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(47)  # gzip (or zlib), by the header it finds
        elif encoding == "deflate":
            self._decoder = "deflate"  # zlib-wrapped or raw: told by its first two bytes
        elif encoding not in ("", "identity"):
            self._keep = False
            self._fail_decoding = encoding
        if method == "HEAD" or status in (204, 304):
            self._mode = "none"
        elif transfer_chunked(headers.get("transfer-encoding", "")):
            self._mode = "chunked"
            if "content-length" in headers:  # both: chunked wins, the socket is not reused
                self._keep = False
        elif "content-length" in headers:
            self._mode = "length"
            self._length = content_length(headers["content-length"])
        else:
            self._mode = "close"
            self._keep = False
        if self._mode == "none" or self._length == 0:
            self._finish()
            self._settle()

    # --- what requests and the backends call -----------------------------------------------

    def read_chunk(self, wait: float | None = None) -> bytes | None:
        """The next piece of the body (decoded); b"" at its end; None if `wait` seconds
        passed with nothing new."""
        if self._pending:
            out, self._pending = self._pending, b""
            return out
        while True:
            if self._buf or self._done:
                out = self._decode(self._take())
                if out:
                    self._check_size(out)
                if self._done:
                    self._settle()
                if out or self._done:
                    return out
            data = self._recv(wait)
            if data is None:
                return None
            if not data:
                self._eof()
                continue
            self._buf += data

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
        self._done = True

    def release_conn(self) -> None:
        if not self._done:
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

    def _eof(self) -> None:
        if self._mode == "close":
            self._done = True
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()
            return
        self.close()
        raise ChunkedEncodingError("the upstream closed the connection mid-answer")

    def _take(self) -> bytes:
        """Decode what the buffer holds into body bytes (framing removed)."""
        buf = self._buf
        if self._mode == "length":
            assert self._length is not None
            if len(buf) > self._length:
                self._keep = False  # more than was announced: do not trust this socket again
                del buf[self._length :]
            out = bytes(buf)
            buf.clear()
            self._length -= len(out)
            if self._length == 0:
                self._finish()
            return out
        if self._mode == "close":
            out = bytes(buf)
            buf.clear()
            return out
        if self._mode == "none":
            buf.clear()
            return b""
        return self._take_chunked(buf)

    def _take_chunked(self, buf: bytearray) -> bytes:
        parts: list[bytes] = []
        pos = 0
        end = len(buf)
        complete = False
        while pos < end:
            left = self._chunk_left
            if left > 0:
                take = min(left, end - pos)
                parts.append(bytes(buf[pos : pos + take]))
                pos += take
                self._chunk_left = left - take or -1
                continue
            newline = buf.find(b"\r\n", pos)
            if newline < 0:
                if end - pos > MAX_CHUNK_LINE:
                    self._protocol_error("an over-long chunk line")
                break
            line = bytes(buf[pos:newline])
            pos = newline + 2
            if left == -1:
                if line:
                    self._protocol_error("chunk data longer than its size")
                self._chunk_left = 0
            elif left == -2:
                if not line:  # the empty line after the (ignored) trailers
                    complete = True
                    break
            else:
                size_text = line.split(b";", 1)[0].strip()
                if not _CHUNK_SIZE.fullmatch(size_text):
                    self._protocol_error("a bad chunk size")
                size = int(size_text, 16)
                self._chunk_left = size if size else -2
        del buf[:pos]
        if complete:
            if buf:  # bytes after the end of the answer: do not trust this socket again
                self._keep = False
                buf.clear()
            self._finish()
        return b"".join(parts)

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

    def _decode(self, data: bytes) -> bytes:
        if self._fail_decoding:
            self.close()
            raise ContentDecodingError(f"unsupported Content-Encoding {self._fail_decoding!r}")
        if self._decoder is None:
            return data
        if self._decoder == "deflate":
            data = self._deflate_head + data
            if len(data) < 2 and not self._done:
                self._deflate_head = data
                return b""
            self._deflate_head = b""
            wrapped = len(data) >= 2 and _zlib_wrapped(data)
            self._decoder = zlib.decompressobj(15 if wrapped else -15)
        try:
            out = self._decoder.decompress(data)
            if self._done:
                out += self._decoder.flush()
                self._decoder = None
        except zlib.error:
            self.close()
            raise ContentDecodingError("the upstream sent a corrupt compressed body") from None
        return out

    def _finish(self) -> None:
        """The body's framing ended; the connection is settled after the last bytes were
        decoded and counted (`_settle`): an answer over a cap is never pooled."""
        self._done = True

    def _settle(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._keep and not self._buf:
            self._release(conn)
        else:
            conn.close()

    def _protocol_error(self, what: str) -> None:
        self.close()
        raise ChunkedEncodingError(f"the upstream sent {what}")


def encode_request(
    method: str,
    path: str,
    host_header: str,
    headers: Any,
    body: Any,
    proxy_authorization: str | None = None,
) -> tuple[bytes, bytes]:
    """(head, body) of one request; `path` is the request target (origin form, or the
    absolute URL for a forward proxy, which then gets `proxy_authorization`)."""
    if body is None:
        payload = b""
    elif isinstance(body, bytes):
        payload = body
    elif isinstance(body, str):
        payload = body.encode("utf-8")
    else:
        raise ValueError("qwenproxy's transport sends bytes or str bodies only")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host_header}"]
    seen_length = seen_encoding = False
    for name, value in headers.items():
        lower = name.lower()
        if lower == "host":
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not _TOKEN.fullmatch(name) or BAD_HEADER_CHARS.search(value):
            raise InvalidHeader(f"invalid header {name!r}")
        if lower == "content-length":
            seen_length = True
            value = str(len(payload))
        elif lower == "accept-encoding":
            seen_encoding = True
            value = "gzip, deflate"  # what this transport decodes
        lines.append(f"{name}: {value}")
    if not seen_length and (payload or method in ("POST", "PUT", "PATCH")):
        lines.append(f"Content-Length: {len(payload)}")
    if not seen_encoding:
        lines.append("Accept-Encoding: identity")
    if proxy_authorization:
        lines.append(f"Proxy-Authorization: {proxy_authorization}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1"), payload


class Unanswered(ConnectionResetError):
    """The connection ended before any byte of an answer."""


def _recv_checking(
    sock: socket.socket, limit: float | None, while_waiting: Callable[[], None]
) -> bytes:
    """`sock.recv`, calling `while_waiting()` every WAIT_CHECK_SECONDS of silence (it may
    raise to end the wait); TimeoutError once `limit` seconds passed without data."""
    waited = 0.0
    try:
        while True:
            step = WAIT_CHECK_SECONDS if limit is None else min(WAIT_CHECK_SECONDS, limit - waited)
            sock.settimeout(max(step, 0.001))
            started = time.monotonic()
            try:
                return sock.recv(RECV_SIZE)
            except TimeoutError:
                waited += time.monotonic() - started
                if limit is not None and waited >= limit:
                    raise
                while_waiting()
    finally:
        sock.settimeout(limit)


def read_head(
    sock: socket.socket,
    read_timeout: float | None = None,
    while_waiting: Callable[[], None] | None = None,
) -> tuple[int, str, CaseInsensitiveDict, bytearray, bool]:
    """Read up to the end of an answer's head: (status, reason, headers, leftover bytes,
    whether the connection stays open after the body). Informational (1xx) answers are
    skipped. With `while_waiting`, a long wait calls it now and then (see
    `_recv_checking`); the socket's timeout must then be `read_timeout`."""
    buf = bytearray()
    searched = 0
    answered = False  # any byte of an answer came back
    while True:
        end = buf.find(b"\r\n\r\n", max(0, searched - 3))
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise ValueError("the answer's head is too large")
            searched = len(buf)
            try:
                if while_waiting is None:
                    data = sock.recv(RECV_SIZE)
                else:
                    data = _recv_checking(sock, read_timeout, while_waiting)
            except (ConnectionResetError, BrokenPipeError) as exc:
                if answered or buf:
                    raise
                raise Unanswered(exc.strerror or "connection reset") from None
            if not data:
                if answered or buf:
                    raise ConnectionResetError("the connection closed in the answer's head")
                raise Unanswered("the connection closed before an answer")
            buf += data
            continue
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        searched = 0
        answered = True
        status, reason, headers, http10 = parse_head(head)
        if 100 <= status < 200:
            continue
        connection = headers.get("connection", "").lower()
        keep = "keep-alive" in connection if http10 else "close" not in connection
        return status, reason, headers, buf, keep


def parse_head(head: str) -> tuple[int, str, CaseInsensitiveDict, bool]:
    lines = head.split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError("not an HTTP/1.x status line")
    headers: CaseInsensitiveDict = CaseInsensitiveDict()
    store: dict[str, tuple[str, str]] = headers._store  # one pass, no per-item __setitem__
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError("a malformed header line")
        lower = name.lower()
        value = value.strip()
        if lower in store:
            value = f"{store[lower][1]}, {value}"
        store[lower] = (name, value)
    return int(code), reason, headers, version == "HTTP/1.0"


def content_length(value: str) -> int:
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        raise ValueError("conflicting Content-Length headers")
    text = values.pop()
    if not text.isdigit():
        raise ValueError("a bad Content-Length")
    return int(text)


def reason_of(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
