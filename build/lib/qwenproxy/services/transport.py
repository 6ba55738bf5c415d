"""The shared `requests.Session`'s transport (mounted with `Session.mount`): pooled
keep-alive HTTP/1.1 connections to the configured upstreams, TLS verified against
certifi's bundle, HTTP proxies. The wire format is in services/http1.py (answers parsed
by llhttp, through `httptools`).
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import select
import socket
import ssl
import time
import weakref
from collections import deque
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

from qwenproxy.config.secrets import split_proxy_url
from qwenproxy.services.http1 import (
    BAD_HEADER_CHARS,
    LeanBody,
    Unanswered,
    encode_request,
    read_head,
    reason_of,
)

try:  # a zero-timeout readiness check needs no hub switch: use the real poll under gevent
    from gevent.monkey import get_original

    _poll = get_original("select", "poll")
except ImportError:  # pragma: no cover - gevent is a runtime dependency
    _poll = select.poll
_POLLRDHUP = getattr(select, "POLLRDHUP", 0)  # Linux: the peer shut down its sending side

# Idle keep-alive sockets older than this are closed rather than reused: below the 60 s
# idle timeout of common load balancers, so a reuse seldom races the server's own close.
MAX_IDLE_SECONDS = 50.0
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
        return _ready(self.sock) != 0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


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
        self.max_idle_per_host = max_idle_per_host
        self._proxies = {
            "https": TunnelProxy.from_url(proxy, no_proxy) if proxy else None,
            "http": (
                TunnelProxy.from_url(http_proxy, no_proxy, "UPSTREAM_HTTP_PROXY")
                if http_proxy
                else None
            ),
        }
        self._default_verify: bool | str = ca_bundle or True
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
        while_waiting: Callable[[], None] | None = None,
    ) -> requests.Response:
        """requests' `send`, plus `while_waiting`: called about once a second while the
        answer's head is awaited; whatever it raises ends the wait (and the connection)."""
        if cert:
            raise ValueError("qwenproxy's transport does not send client certificates")
        scheme, host, port, host_header, path = _target(request.url or "")
        if proxies and (proxies.get(scheme) or proxies.get("all")):
            raise requests.exceptions.ProxyError("qwenproxy's transport does not use proxies")
        connect_timeout, read_timeout = _timeouts(timeout)
        method = (request.method or "GET").upper()
        proxy = self._proxies[scheme]
        if proxy is not None and not proxy.applies_to(host):
            proxy = None
        forward = proxy is not None and scheme == "http"
        head, body = encode_request(
            method,
            f"http://{host_header}{path}" if forward else path,
            host_header,
            request.headers,
            request.body,
            proxy.authorization if forward and proxy is not None else None,
        )
        if verify is True:
            verify = self._default_verify
        key = (scheme, host, port, verify if scheme == "https" else None, proxy is not None)

        retried = False
        while True:
            conn = None if retried else self._checkout(key)
            reused = conn is not None
            if conn is None:
                conn = self._connect(key, connect_timeout)
            sent_at = time.monotonic()
            written = False  # whether any byte of this request may have reached the server
            try:
                conn.sock.settimeout(read_timeout)
                first = head + body if body and len(body) <= 65536 else head
                sent = conn.sock.send(first)
                written = True
                if sent < len(first):
                    conn.sock.sendall(first[sent:])
                if first is head and body:
                    conn.sock.sendall(body)
                answer = read_head(conn.sock, read_timeout, while_waiting, method)
                if forward and answer.status == 407 and proxy is not None:
                    conn.close()  # the proxy's answer, not the upstream's
                    raise proxy.wants_credentials()
                raw = LeanBody(conn, self.checkin, answer, read_timeout)
                break
            except TimeoutError:
                conn.close()
                raise ReadTimeout(f"{host} did not answer within {read_timeout} s") from None
            except requests.exceptions.ProxyError:  # an OSError too: not one of those below
                raise
            except (Unanswered, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                unanswered = not written or isinstance(exc, Unanswered)
                if reused and unanswered and self._may_send_again(method, written, sent_at):
                    retried = True
                    continue
                if written and isinstance(exc, Unanswered):
                    raise ClosedWithoutAnswer(
                        "the upstream closed the connection without answering"
                        + ("" if method in IDEMPOTENT else "; the request was not sent again")
                    ) from None
                raise ConnectionError(f"{host} closed the connection: {reason_of(exc)}") from None
            except OSError as exc:
                conn.close()
                raise ConnectionError(f"{host} closed the connection: {reason_of(exc)}") from None
            except ValueError as exc:
                conn.close()
                raise ConnectionError(f"{host} sent a malformed answer: {exc}") from None
            except BaseException:  # `while_waiting` ended the wait, or the greenlet is killed
                conn.close()
                raise
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
        _close_idle(self._idle)

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


class TunnelProxy:
    """An HTTP proxy: it opens `CONNECT` tunnels to HTTPS upstreams, and takes plain-http
    requests in absolute form. `setting` names the variable it came from (for errors)."""

    def __init__(
        self,
        host: str,
        port: int,
        authorization: str | None,
        bypass: tuple[str, ...],
        setting: str = "UPSTREAM_PROXY",
    ):
        self.host = host
        self.port = port
        self.authorization = authorization  # "Basic …": never logged, never in an error
        self._bypass = bypass
        self._setting = setting

    @classmethod
    def from_url(
        cls, url: str, no_proxy: tuple[str, ...] = (), setting: str = "UPSTREAM_PROXY"
    ) -> TunnelProxy:
        address = split_proxy_url(url)  # the same reading config validated
        authorization = None
        if address.username is not None:
            pair = f"{address.username}:{address.password or ''}"
            authorization = "Basic " + base64.b64encode(pair.encode()).decode()
        return cls(address.host, address.port, authorization, no_proxy, setting)

    def wants_credentials(self) -> requests.exceptions.ProxyError:
        return requests.exceptions.ProxyError(
            f"the upstream proxy {self.host}:{self.port} wants credentials (HTTP 407): "
            f"put them in {self._setting} as http://user:password@host:port"
        )

    def applies_to(self, host: str) -> bool:
        """False for loopback hosts and for hosts NO_PROXY names (host, .domain, IP,
        network, or `*` for all)."""
        host = host.lower().rstrip(".").strip("[]")
        if host == "localhost" or host.endswith(".localhost"):
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None:
            mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
            if address.is_loopback or (mapped is not None and mapped.is_loopback):
                return False
        for entry in self._bypass:
            if entry == "*":
                return False
            name = entry.lstrip(".").rstrip(".")
            if address is not None:
                try:
                    if address in ipaddress.ip_network(name, strict=False):
                        return False
                except ValueError:
                    pass
            elif host == name or host.endswith("." + name):
                return False
        return True

    def open_tunnel(self, sock: socket.socket, host: str, port: int) -> None:
        """Ask the proxy for a tunnel to host:port on `sock` (a fresh connection to it)."""
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if self.authorization:
            lines.append(f"Proxy-Authorization: {self.authorization}")
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            answer = read_head(sock, method="CONNECT")
        except (OSError, ValueError) as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise requests.exceptions.ProxyError(
                f"the upstream proxy {self.host}:{self.port} did not open a tunnel to {target}"
            ) from None
        if answer.status == 407:
            raise self.wants_credentials()
        if not 200 <= answer.status < 300 or answer.body or answer.spoiled:
            raise requests.exceptions.ProxyError(
                f"the upstream proxy {self.host}:{self.port} refused a tunnel to {target} "
                f"(HTTP {answer.status} {answer.reason})"
            )


def _ready(sock: socket.socket) -> int:
    """The socket's poll events right now (POLLIN, POLLHUP, ...), without waiting; POLLERR
    for a socket that is already closed."""
    try:
        poller = _poll()
        poller.register(sock.fileno(), select.POLLIN | _POLLRDHUP)
        events = poller.poll(0)
    except (OSError, ValueError):
        return select.POLLERR
    return events[0][1] if events else 0


def peer_closed(sock: socket.socket) -> bool:
    """Whether the other end of a connection closed it (or shut down its sending side).
    Bytes waiting to be read are not a close. Never waits."""
    events = _ready(sock)
    if not events:
        return False
    if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL | _POLLRDHUP):
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""  # readable: at once, data or EOF
    except (BlockingIOError, ValueError):  # ValueError: a TLS socket takes no flags
        return False
    except OSError:
        return True


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
