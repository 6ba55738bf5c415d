"""The shared `requests.Session`'s transport (mounted with `Session.mount`): keep-alive
HTTP/1.1 connections to the configured upstreams (pooled in upstream/http/pool.py),
TLS verified against certifi's bundle, HTTP proxies (upstream/http/tunnel.py), and when a
request that failed on a reused connection goes again. The wire format is in
upstream/http/heads.py and upstream/http/body.py (answers parsed by llhttp, through
`httptools`).
"""

from __future__ import annotations

import functools
import socket
import ssl
import time
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import certifi
import requests
from requests.adapters import BaseAdapter
from requests.exceptions import (
    ConnectionError,
    ConnectTimeout,
    InvalidURL,
    ReadTimeout,
    SSLError,
)
from requests.utils import get_encoding_from_headers

from qwenproxy.upstream.http.body import LeanBody
from qwenproxy.upstream.http.heads import (
    BAD_HEADER_CHARS,
    Answer,
    Unanswered,
    encode_request,
    read_head,
    reason_of,
)
from qwenproxy.upstream.http.pool import (
    ConnectionPool,
    PooledConnection,
    close_idle,
)
from qwenproxy.upstream.http.tunnel import TunnelProxy

# A reused connection that ends this soon after an idempotent request, with no answer
# byte, was closed by the server as the request crossed it; the request goes again, once.
CROSSED_CLOSE_SECONDS = 1.0
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})  # RFC 9110 section 9.2.2
DEFAULT_PORTS = {"http": 80, "https": 443}


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
    if BAD_HEADER_CHARS.search(path) or " " in path:
        raise InvalidURL(f"bad characters in {url!r}")
    return scheme, host, port, host_header, path


class ClosedWithoutAnswer(ConnectionError):
    """The upstream closed the connection after the request was written, before any byte
    of an answer. A POST is not sent again: the upstream may have acted on it."""


class _Call:
    """One request as the transport sends it: the pool key, the encoded head and body, and
    how long to wait; `written` turns True once any byte of it may have reached the peer."""

    __slots__ = ("method", "key", "host", "head", "body", "timeouts", "while_waiting", "proxy")

    def __init__(
        self,
        method: str,
        key: tuple[Any, ...],
        head: bytes,
        body: bytes,
        timeouts: tuple[float | None, float | None],
        while_waiting: Callable[[], None] | None,
        proxy: TunnelProxy | None,
    ) -> None:
        self.method = method
        self.key = key
        self.host = key[1]
        self.head = head
        self.body = body
        self.timeouts = timeouts
        self.while_waiting = while_waiting
        self.proxy = proxy  # a forward proxy for a plain-http upstream: its 407 is its own


class LeanAdapter(BaseAdapter):
    """A `requests` transport adapter: pooled HTTP/1.1 keep-alive connections per host.

    Why not urllib3: on the proxy's hot path its pool, `http.client`'s buffered reader and
    `email`-based header parsing cost ~420 µs a call against ~200 µs here — more than the
    rest of the proxy's own work. One write per request; the answer parsed by llhttp
    (`http1.Answer`) from bytes this transport reads itself; the body read by
    `http1.LeanBody`, so a stream can wait for upstream data with a timeout and come back
    empty-handed (`read_chunk(wait)`) without a second greenlet and without losing a
    byte: that is how the SSE relay sends keep-alives.

    Upstreams can be reached through HTTP proxies — `proxy` for HTTPS ones (`CONNECT`
    tunnels), `http_proxy` for plain-http ones (absolute-form requests, RFC 9112 section
    3.2.2) — with Basic credentials from the proxy URL, except hosts in `no_proxy` and
    loopback. A proxy's own refusals (407, a refused tunnel) are `ProxyError`s; `ca_bundle`
    replaces certifi's CAs (a company's TLS-inspecting proxy, say). Requests' own proxy
    arguments are refused: the proxy is configuration, never a request's choice.

    Scope: configured OpenAI-compatible HTTP(S) upstreams. No client certificates, bodies
    of bytes/str only, no redirects (the caller decides)."""

    def __init__(
        self,
        max_idle_per_host: int = 100,
        proxy: str | None = None,
        no_proxy: tuple[str, ...] = (),
        ca_bundle: str | None = None,
        http_proxy: str | None = None,
    ) -> None:
        super().__init__()
        self._proxies = {
            "https": TunnelProxy.from_url(proxy, no_proxy) if proxy else None,
            "http": (
                TunnelProxy.from_url(http_proxy, no_proxy, "UPSTREAM_HTTP_PROXY")
                if http_proxy
                else None
            ),
        }
        self._default_verify: bool | str = ca_bundle or True
        self._pool = ConnectionPool(max_idle_per_host)
        self._contexts: dict[Any, ssl.SSLContext] = {}
        # A dropped adapter (an app built and thrown away) still closes its idle sockets.
        weakref.finalize(self, close_idle, self._pool.idle)

    # --- requests' adapter interface ----------------------------------------------------

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Any = None,
        while_waiting: Callable[[], None] | None = None,
    ) -> requests.Response:
        """requests' `send`, plus `while_waiting`: called about once a second while the
        answer's head is awaited; whatever it raises ends the wait (and the connection)."""
        if cert:
            raise ValueError("qwenproxy's transport does not send client certificates")
        scheme, host, port, host_header, path = _target(request.url or "")
        if proxies and (proxies.get(scheme) or proxies.get("all")):
            raise requests.exceptions.ProxyError("qwenproxy's transport does not use proxies")
        method = (request.method or "GET").upper()
        proxy = self._proxies[scheme]
        if proxy is not None and not proxy.applies_to(host):
            proxy = None
        forward = proxy if proxy is not None and scheme == "http" else None
        head, body = encode_request(
            method,
            f"http://{host_header}{path}" if forward else path,
            host_header,
            request.headers,
            request.body,
            forward.authorization if forward is not None else None,
        )
        if verify is True:
            verify = self._default_verify
        key = (scheme, host, port, verify if scheme == "https" else None, proxy is not None)
        call = _Call(method, key, head, body, _timeouts(timeout), while_waiting, forward)
        answer, raw = self._exchange(call)
        response = requests.Response()
        response.status_code = answer.status
        response.reason = answer.reason
        response.headers = answer.headers
        response.raw = raw
        response.url = request.url or ""
        response.request = request
        response.connection = self
        response.encoding = get_encoding_from_headers(answer.headers)
        if not stream:
            response.content  # noqa: B018 - read now, as requests' own adapter contract says
        return response

    def close(self) -> None:
        self._pool.close()

    def checkin(self, conn: PooledConnection) -> None:
        """Take back a connection whose answer was fully read (LeanBody's `release`)."""
        self._pool.checkin(conn)

    # --- one exchange, sent again at most once ------------------------------------------

    def _exchange(self, call: _Call) -> tuple[Answer, LeanBody]:
        """Write the request and read the answer's head, on a pooled connection or a new
        one; a failure on a pooled one may send the request again, once, on a new one."""
        retried = False
        while True:
            conn = None if retried else self._pool.checkout(call.key)
            reused = conn is not None
            if conn is None:
                conn = self._connect(call.key, call.timeouts[0])
            sent_at = time.monotonic()
            written = [False]  # whether any byte of this request may have reached the server
            try:
                return self._attempt(conn, call, written)
            except TimeoutError:
                conn.close()
                raise ReadTimeout(
                    f"{call.host} did not answer within {call.timeouts[1]} s"
                ) from None
            except requests.exceptions.ProxyError:  # an OSError too: not one of those below
                raise
            except (Unanswered, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                unanswered = not written[0] or isinstance(exc, Unanswered)
                if reused and unanswered and self._may_send_again(call.method, written[0], sent_at):
                    retried = True
                    continue
                raise _closed_error(call, written[0], exc) from None
            except OSError as exc:
                conn.close()
                raise ConnectionError(
                    f"{call.host} closed the connection: {reason_of(exc)}"
                ) from None
            except ValueError as exc:
                conn.close()
                raise ConnectionError(f"{call.host} sent a malformed answer: {exc}") from None
            except BaseException:  # `while_waiting` ended the wait, or the greenlet is killed
                conn.close()
                raise

    def _attempt(
        self, conn: PooledConnection, call: _Call, written: list[bool]
    ) -> tuple[Answer, LeanBody]:
        """One write of the request (one `send` when it fits) and the read of its head."""
        sock, head, body = conn.sock, call.head, call.body
        read_timeout = call.timeouts[1]
        sock.settimeout(read_timeout)
        first = head + body if body and len(body) <= 65536 else head
        sent = sock.send(first)
        written[0] = True
        if sent < len(first):
            sock.sendall(first[sent:])
        if first is head and body:
            sock.sendall(body)
        answer = read_head(sock, read_timeout, call.while_waiting, call.method)
        if call.proxy is not None and answer.status == 407:
            conn.close()  # the proxy's answer, not the upstream's
            raise call.proxy.wants_credentials()
        return answer, LeanBody(conn, self.checkin, answer, read_timeout)

    @staticmethod
    def _may_send_again(method: str, written: bool, sent_at: float) -> bool:
        """Whether a request that failed on a pooled connection goes again on a new one.
        When nothing of it could be written, the server had closed the connection first:
        any request goes again. Once bytes were written the server may have acted on them
        (a completion billed), so only an idempotent request goes again, and only when the
        close came at once — the server closed this idle connection as the request crossed
        it. A later close may follow real work upstream: that is an error (as Go's
        net/http does: non-idempotent requests are never replayed once written)."""
        if not written:
            return True
        return method in IDEMPOTENT and time.monotonic() - sent_at < CROSSED_CLOSE_SECONDS

    # --- new connections ----------------------------------------------------------------

    def _connect(self, key: tuple[Any, ...], timeout: float | None) -> PooledConnection:
        scheme, host, port, verify, via_proxy = key
        proxy = self._proxies[scheme] if via_proxy else None
        to_host, to_port = (proxy.host, proxy.port) if proxy else (host, port)
        try:
            sock = socket.create_connection((to_host, to_port), timeout=timeout)
        except TimeoutError:
            raise ConnectTimeout(f"connecting to {to_host}:{to_port} timed out") from None
        except OSError as exc:
            error = requests.exceptions.ProxyError if proxy else ConnectionError
            raise error(f"could not connect to {to_host}:{to_port}: {reason_of(exc)}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if proxy is not None and scheme == "https":
                proxy.open_tunnel(sock, host, port)
            if scheme == "https":
                sock = self._tls_context(verify).wrap_socket(sock, server_hostname=host)
        except TimeoutError:
            sock.close()
            step = "the proxy tunnel or TLS handshake" if proxy else "the TLS handshake"
            raise ConnectTimeout(f"{step} to {host}:{port} timed out") from None
        except requests.exceptions.ProxyError:
            sock.close()
            raise
        except ssl.SSLError as exc:
            sock.close()
            raise SSLError(f"TLS with {host}:{port} failed: {exc.reason or exc}") from None
        except OSError as exc:
            sock.close()
            raise ConnectionError(f"could not connect to {host}:{port}: {reason_of(exc)}") from None
        except BaseException:  # a gevent timeout, a killed greenlet: no socket left behind
            sock.close()
            raise
        return PooledConnection(sock, key)

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


def _closed_error(call: _Call, written: bool, exc: OSError) -> ConnectionError:
    """The error for a connection that ended before an answer and is not tried again."""
    if written and isinstance(exc, Unanswered):
        return ClosedWithoutAnswer(
            "the upstream closed the connection without answering"
            + ("" if call.method in IDEMPOTENT else "; the request was not sent again")
        )
    return ConnectionError(f"{call.host} closed the connection: {reason_of(exc)}")


def _timeouts(timeout: Any) -> tuple[float | None, float | None]:
    if isinstance(timeout, tuple):
        connect, read = timeout
        return connect, read
    return timeout, timeout
