"""The HTTP/1.1 wire format of the upstream transport (upstream/http/transport.py): request
heads, and answers up to the end of their head.

Answers are parsed by llhttp, Node.js's HTTP parser, through MagicStack's `httptools`
binding: status line, headers, framing (length, chunked, close-delimited), chunk sizes and
trailers are its work. This module reads the bytes off the socket itself and feeds them
in (`read_head`, up to the end of an answer's head; the body is read by
upstream/http/body.py's `LeanBody`, which can wait for data and come back empty-handed)
and keeps what llhttp leaves to its caller: the end of a close-delimited body (the
connection's end), HEAD and CONNECT answers (no body), 1xx answers (skipped), bytes after
an answer (the socket is not reused) and exact transfer-coding parsing. Request heads are
written here too (`encode_request`).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import Any

import httptools
from requests.exceptions import InvalidHeader, RequestException
from requests.structures import CaseInsensitiveDict

RECV_SIZE = 64 * 1024
# Bytes llhttp may take without progress (a head, a chunk-size line, trailers): past this
# the answer is refused, so a peer cannot make the proxy buffer an endless header.
MAX_HEAD = 64 * 1024
WAIT_CHECK_SECONDS = 1.0  # how often a long wait for an answer asks `while_waiting`
BAD_HEADER_CHARS = re.compile(r"[\r\n\x00]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
BODYLESS_METHODS = ("HEAD", "CONNECT")  # a 2xx to CONNECT opens a tunnel, not a body


class AnswerTooLarge(RequestException):
    """The answer went over http1_body.MAX_ANSWER_BYTES, or one line of an event stream
    over http1_body.MAX_EVENT_LINE_BYTES; its connection is closed, never pooled."""


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


class Answer:
    """One answer as llhttp reports it: `feed` it bytes; `httptools` calls the `on_*`
    methods. The head (`status`, `reason`, `headers`: repeated fields joined with ", ")
    is ready once `head_done`; decoded-framing body pieces wait in `body`."""

    __slots__ = (
        "_bodyless",
        "_keep",
        "_parser",
        "_refused",
        "_since",
        "_store",
        "body",
        "broken",
        "complete",
        "head_done",
        "headers",
        "reason",
        "spoiled",
        "status",
        "unframed",
    )

    def __init__(self, method: str = "GET") -> None:
        self._bodyless = method in BODYLESS_METHODS
        self.status = 0
        self.reason = ""
        self.headers: CaseInsensitiveDict = CaseInsensitiveDict()
        self._store: dict[str, tuple[str, str]] = self.headers._store  # no per-item setitem
        self.body: list[bytes] = []
        self.head_done = False
        self.complete = False
        self.unframed = False  # close-delimited: the connection's end is the body's end
        self.spoiled = False  # bytes came after the answer: its socket is not reused
        self.broken = ""  # what was wrong with the body, told when it is read
        self._keep = False
        self._since = 0  # bytes fed since llhttp last reported progress
        self._refused = ""  # a head llhttp took but this transport cannot read
        self._parser = httptools.HttpResponseParser(self)

    def feed(self, data: bytes) -> None:
        """Parse more of the answer. ValueError for a malformed head; a malformed body
        leaves `broken` set (the body's reader raises it after what came before)."""
        if self.complete:
            self.spoiled = True
            return
        self._since += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("an unasked-for protocol upgrade")
        except httptools.HttpParserError as exc:
            if self.complete:  # the bytes after the end of the answer are what failed
                self.spoiled = True
            else:
                self._fail(str(exc) or type(exc).__name__)
        if self._refused:
            raise ValueError(self._refused)
        if self._since > MAX_HEAD and not self.complete:
            self._fail("an over-long head, chunk line or trailer section")

    def end(self) -> bool:
        """The connection ended: whether that completes the answer (a close-delimited
        body)."""
        if self.head_done and self.unframed and not self.broken:
            self.complete = True
        return self.complete

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this answer."""
        return self.complete and self._keep and not self.spoiled

    def _fail(self, what: str) -> None:
        if not self.head_done:
            raise ValueError(what)
        self.broken = self.broken or what

    # --- httptools' callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.head_done:  # a second answer starts: nobody asked for it
            self.spoiled = True

    def on_status(self, reason: bytes) -> None:
        if not self.head_done:
            self.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_done:
            return  # trailers: not used
        key = name.decode("latin-1")
        lower = key.lower()
        text = value.decode("latin-1").strip()
        store = self._store
        if lower in store:
            text = f"{store[lower][1]}, {text}"
        store[lower] = (key, text)

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue, 103 Early Hints): skipped
            self.reason = ""
            self._store.clear()
            return
        headers = self.headers
        try:
            chunked = transfer_chunked(headers.get("transfer-encoding", ""))
        except ValueError as exc:  # told by `feed` once llhttp returns
            self._refused = str(exc)
            return
        self.status = status
        self.head_done = True
        self._since = 0
        if self._bodyless:
            self.complete = True  # llhttp would wait for the body a HEAD's length names
            return
        self._keep = parser.should_keep_alive()
        self.unframed = "content-length" not in headers and not chunked
        if status in (204, 304):
            self.unframed = False

    def on_body(self, body: bytes) -> None:
        self._since = 0
        if self.complete:
            self.spoiled = True
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.head_done and not self.complete:
            self._keep = self._parser.should_keep_alive()  # reset once the callback returns
            self.complete = True


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
    method: str = "GET",
) -> Answer:
    """Read up to the end of an answer's head (informational 1xx answers are skipped)
    and return it; the bytes of the body that came with it are parsed already. With
    `while_waiting`, a long wait calls it now and then (see `_recv_checking`); the
    socket's timeout must then be `read_timeout`. `method` is the request's (a HEAD or
    CONNECT answer has no body)."""
    answer = Answer(method)
    answered = False  # any byte of an answer came back
    while not answer.head_done:
        try:
            if while_waiting is None:
                data = sock.recv(RECV_SIZE)
            else:
                data = _recv_checking(sock, read_timeout, while_waiting)
        except (ConnectionResetError, BrokenPipeError) as exc:
            if answered:
                raise
            raise Unanswered(exc.strerror or "connection reset") from None
        if not data:
            if answered:
                raise ConnectionResetError("the connection closed in the answer's head")
            raise Unanswered("the connection closed before an answer")
        answered = True
        answer.feed(data)
    return answer


def reason_of(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
