"""The shared `requests.Session`'s transport: a lean HTTP/1.1 client with keep-alive
connection pooling, mounted with `Session.mount` (requests' own extension point).

Why not urllib3: on the proxy's hot path its connection pool, `http.client`'s buffered
reader and `email`-based header parsing cost about 200 µs a request — more than the rest
of the proxy's own work. This transport sends one request with one `sendall`, parses the
answer's head itself, and decodes `Content-Length`, chunked and close-delimited bodies.
It owns its read buffer, so a stream can wait for upstream data with a timeout and come
back empty-handed (`read_chunk(wait=…)`) without a second greenlet and without losing a
byte — which is how the SSE relay sends keep-alives.

Scope: the upstreams are configured OpenAI-compatible HTTP(S) APIs. No proxies, no client
certificates, no request bodies other than bytes/str, no redirects (the caller decides).
"""

from __future__ import annotations

import functools
import re
import select
import socket
import ssl
import time
import weakref
import zlib
from collections import deque
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import certifi
import requests
from requests.adapters import BaseAdapter
from requests.exceptions import (
    ChunkedEncodingError,
    ConnectionError,
    ConnectTimeout,
    ContentDecodingError,
    InvalidHeader,
    InvalidURL,
    ReadTimeout,
    SSLError,
)
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

try:  # a zero-timeout readiness check needs no hub switch: use the real poll under gevent
    from gevent.monkey import get_original

    _poll = get_original("select", "poll")
except ImportError:  # pragma: no cover - gevent is a runtime dependency
    _poll = select.poll

RECV_SIZE = 64 * 1024
MAX_HEAD = 64 * 1024  # status line + headers
MAX_CHUNK_LINE = 4096
# Idle keep-alive sockets older than this are closed rather than reused: below the 60 s
# idle timeout of common load balancers, so a reuse seldom races the server's own close.
MAX_IDLE_SECONDS = 50.0
# A reused connection that ends this soon after the request, with no answer byte, was
# closed by the server as the request crossed it; the request is sent again, once.
CROSSED_CLOSE_SECONDS = 1.0
DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")
_BAD_HEADER_CHARS = re.compile(r"[\r\n\x00]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@functools.lru_cache(maxsize=256)
def _target(url: str) -> tuple[str, str, int, str, str]:
    """(scheme, host, port, Host header, request target) of an absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise InvalidURL(f"not an absolute http(s) URL: {url!r}")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise InvalidURL(f"bad port in {url!r}") from None
    host = parts.hostname
    host_header = f"[{host}]" if ":" in host else host
    if port != DEFAULT_PORTS[scheme]:
        host_header = f"{host_header}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    if _BAD_HEADER_CHARS.search(path) or " " in path:
        raise InvalidURL(f"bad characters in {url!r}")
    return scheme, host, port, host_header, path


class _Connection:
    """One open socket to an upstream, reusable after a fully read answer."""

    __slots__ = ("sock", "key", "idle_since")

    def __init__(self, sock: socket.socket, key: tuple[Any, ...]) -> None:
        self.sock = sock
        self.key = key
        self.idle_since = 0.0

    def looks_dropped(self) -> bool:
        """An idle keep-alive socket that is readable was closed by the server (EOF) or
        got bytes nobody asked for: either way it must not carry another request."""
        try:
            poller = _poll()
            poller.register(self.sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class LeanAdapter(BaseAdapter):
    """A `requests` transport adapter: pooled HTTP/1.1 keep-alive connections per host."""

    def __init__(self, max_idle_per_host: int = 100) -> None:
        super().__init__()
        self.max_idle_per_host = max_idle_per_host
        self._idle: dict[tuple[Any, ...], deque[_Connection]] = {}
        self._contexts: dict[Any, ssl.SSLContext] = {}
        # A dropped adapter (an app built and thrown away) still closes its idle sockets.
        weakref.finalize(self, _close_idle, self._idle)

    # --- requests' adapter interface ----------------------------------------------------

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        if cert:
            raise ValueError("qwenproxy's transport does not send client certificates")
        scheme, host, port, host_header, path = _target(request.url or "")
        if proxies and (proxies.get(scheme) or proxies.get("all")):
            raise requests.exceptions.ProxyError("qwenproxy's transport does not use proxies")
        connect_timeout, read_timeout = _timeouts(timeout)
        method = (request.method or "GET").upper()
        head, body = _encode_request(method, path, host_header, request.headers, request.body)
        key = (scheme, host, port, verify if scheme == "https" else None)

        retried = False
        while True:
            conn = None if retried else self._checkout(key)
            reused = conn is not None
            if conn is None:
                conn = self._connect(key, connect_timeout)
            sent_at = time.monotonic()
            try:
                conn.sock.settimeout(read_timeout)
                if body and len(body) > 65536:
                    conn.sock.sendall(head)
                    conn.sock.sendall(body)
                else:
                    conn.sock.sendall(head + body if body else head)
                status, reason, headers, rest, keep = _read_head(conn.sock)
                raw = LeanBody(conn, self, method, status, headers, rest, keep, read_timeout)
                break
            except TimeoutError:
                conn.close()
                raise ReadTimeout(f"{host} did not answer within {read_timeout} s") from None
            except (_Unanswered, BrokenPipeError) as exc:
                conn.close()
                if reused and time.monotonic() - sent_at < CROSSED_CLOSE_SECONDS:
                    # The server closed this idle keep-alive connection as our request
                    # crossed it: no byte came back at once. Sent again, once, on a new
                    # connection. A close that comes later may follow real work upstream
                    # (a crash mid-answer): that is an error, never a second request.
                    retried = True
                    continue
                raise ConnectionError(f"{host} closed the connection: {_reason(exc)}") from None
            except OSError as exc:
                conn.close()
                raise ConnectionError(f"{host} closed the connection: {_reason(exc)}") from None
            except ValueError as exc:
                conn.close()
                raise ConnectionError(f"{host} sent a malformed answer: {exc}") from None
        response = requests.Response()
        response.status_code = status
        response.reason = reason
        response.headers = headers
        response.raw = raw
        response.url = request.url or ""
        response.request = request
        response.connection = self
        response.encoding = get_encoding_from_headers(headers)
        if not stream:
            response.content  # noqa: B018 - read now, as requests' own adapter contract says
        return response

    def close(self) -> None:
        _close_idle(self._idle)

    # --- the pool -----------------------------------------------------------------------

    def _checkout(self, key: tuple[Any, ...]) -> _Connection | None:
        conns = self._idle.get(key)
        if not conns:
            return None
        fresh_since = time.monotonic() - MAX_IDLE_SECONDS
        while conns:
            conn = conns.pop()  # the most recently used first
            if conn.idle_since < fresh_since or conn.looks_dropped():
                conn.close()
                continue
            return conn
        return None

    def checkin(self, conn: _Connection) -> None:
        conns = self._idle.get(conn.key)
        if conns is None:
            conns = self._idle.setdefault(conn.key, deque())
        now = time.monotonic()
        while conns and conns[0].idle_since < now - MAX_IDLE_SECONDS:
            conns.popleft().close()  # the oldest idle sockets expire, not just linger
        if len(conns) >= self.max_idle_per_host:
            conn.close()
        else:
            conn.idle_since = now
            conns.append(conn)

    def _connect(self, key: tuple[Any, ...], timeout: float | None) -> _Connection:
        scheme, host, port, verify = key
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise ConnectionError(f"could not connect to {host}:{port}: {_reason(exc)}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = self._tls_context(verify).wrap_socket(sock, server_hostname=host)
        except TimeoutError:
            sock.close()
            raise ConnectTimeout(f"the TLS handshake with {host}:{port} timed out") from None
        except ssl.SSLError as exc:
            sock.close()
            raise SSLError(f"TLS with {host}:{port} failed: {exc.reason or exc}") from None
        except OSError as exc:
            sock.close()
            raise ConnectionError(f"could not connect to {host}:{port}: {_reason(exc)}") from None
        return _Connection(sock, key)

    def _tls_context(self, verify: bool | str) -> ssl.SSLContext:
        context = self._contexts.get(verify)
        if context is None:
            if verify is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                cafile = verify if isinstance(verify, str) else certifi.where()
                context = ssl.create_default_context(cafile=cafile)
            context.set_alpn_protocols(["http/1.1"])
            self._contexts[verify] = context
        return context


class LeanBody:
    """`response.raw`: the body of one answer, read straight off the socket.

    `read_chunk(wait)` returns the next decoded bytes (b"" at the end), or None when
    `wait` seconds passed without data — the connection stays intact for the next call.
    A fully read body hands its connection back to the pool; `close()` before that closes
    the socket (a half-read answer cannot be reused)."""

    def __init__(
        self,
        conn: _Connection,
        pool: LeanAdapter,
        method: str,
        status: int,
        headers: CaseInsensitiveDict,
        rest: bytearray,
        keep_alive: bool,
        read_timeout: float | None,
    ) -> None:
        self._conn: _Connection | None = conn
        self._pool = pool
        self._buf = rest
        self._read_timeout = read_timeout
        self._silence = 0.0  # seconds waited in a row without data (keep-alive waits)
        self._pending = b""
        self._decoder: Any = None
        self._fail_decoding = ""
        self._chunk_left = 0  # >0 data bytes left; 0 size line next; -1 CRLF; -2 trailers
        self._done = False
        self._keep = keep_alive
        self._length: int | None = None
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(47)  # zlib or gzip, by the header it finds
        elif encoding not in ("", "identity"):
            self._keep = False
            self._fail_decoding = encoding
        if method == "HEAD" or status in (204, 304):
            self._mode = "none"
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._mode = "chunked"
            if "content-length" in headers:  # both: chunked wins, the socket is not reused
                self._keep = False
        elif "content-length" in headers:
            self._mode = "length"
            self._length = _content_length(headers["content-length"])
        else:
            self._mode = "close"
            self._keep = False
        if self._mode == "none" or self._length == 0:
            self._finish()

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
            raise ChunkedEncodingError(f"the upstream connection broke: {_reason(exc)}") from None
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

    def _decode(self, data: bytes) -> bytes:
        if self._fail_decoding:
            self.close()
            raise ContentDecodingError(f"unsupported Content-Encoding {self._fail_decoding!r}")
        if self._decoder is None:
            return data
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
        self._done = True
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._keep and not self._buf:
            self._pool.checkin(conn)
        else:
            conn.close()

    def _protocol_error(self, what: str) -> None:
        self.close()
        raise ChunkedEncodingError(f"the upstream sent {what}")


def _close_idle(idle: dict[tuple[Any, ...], deque[_Connection]]) -> None:
    for conns in list(idle.values()):
        while conns:
            conns.pop().close()


# --- request and answer heads -----------------------------------------------------------


def _timeouts(timeout: Any) -> tuple[float | None, float | None]:
    if isinstance(timeout, tuple):
        connect, read = timeout
        return connect, read
    return timeout, timeout


def _encode_request(
    method: str, path: str, host_header: str, headers: Any, body: Any
) -> tuple[bytes, bytes]:
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
        if not _TOKEN.fullmatch(name) or _BAD_HEADER_CHARS.search(value):
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
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1"), payload


class _Unanswered(ConnectionResetError):
    """The connection ended before any byte of an answer."""


def _read_head(sock: socket.socket) -> tuple[int, str, CaseInsensitiveDict, bytearray, bool]:
    """Read up to the end of an answer's head: (status, reason, headers, leftover bytes,
    whether the connection stays open after the body). Informational (1xx) answers are
    skipped."""
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
                data = sock.recv(RECV_SIZE)
            except (ConnectionResetError, BrokenPipeError) as exc:
                if answered or buf:
                    raise
                raise _Unanswered(exc.strerror or "connection reset") from None
            if not data:
                if answered or buf:
                    raise ConnectionResetError("the connection closed in the answer's head")
                raise _Unanswered("the connection closed before an answer")
            buf += data
            continue
        head = bytes(buf[:end]).decode("latin-1")
        del buf[: end + 4]
        searched = 0
        answered = True
        status, reason, headers, http10 = _parse_head(head)
        if 100 <= status < 200:
            continue
        connection = headers.get("connection", "").lower()
        keep = "keep-alive" in connection if http10 else "close" not in connection
        return status, reason, headers, buf, keep


def _parse_head(head: str) -> tuple[int, str, CaseInsensitiveDict, bool]:
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


def _content_length(value: str) -> int:
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        raise ValueError("conflicting Content-Length headers")
    text = values.pop()
    if not text.isdigit():
        raise ValueError("a bad Content-Length")
    return int(text)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
