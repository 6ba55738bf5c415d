"""The upstream transport's pool of idle keep-alive connections (upstream/http/transport.py
checks a connection out before a request and `LeanBody` checks it back in once its answer
was fully read), and what a socket's poll state tells without waiting: whether a pooled
socket was dropped by the server, whether a client went away (`peer_closed`, also used by
the request edge).
"""

from __future__ import annotations

import select
import socket
import time
from collections import deque
from typing import Any

try:  # a zero-timeout readiness check needs no hub switch: use the real poll under gevent
    from gevent.monkey import get_original

    _poll = get_original("select", "poll")
except ImportError:  # pragma: no cover - gevent is a runtime dependency
    _poll = select.poll
_POLLRDHUP = getattr(select, "POLLRDHUP", 0)  # Linux: the peer shut down its sending side

# Idle keep-alive sockets older than this are closed rather than reused: below the 60 s
# idle timeout of common load balancers, so a reuse seldom races the server's own close.
MAX_IDLE_SECONDS = 50.0


class PooledConnection:
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


class ConnectionPool:
    """Idle keep-alive connections per key (scheme, host, port, TLS verification, proxy),
    at most `max_idle_per_host` each; the most recently used goes out first, and sockets
    idle for over MAX_IDLE_SECONDS or dropped by the server are closed, not reused."""

    def __init__(self, max_idle_per_host: int = 100) -> None:
        self.max_idle_per_host = max_idle_per_host
        self.idle: dict[tuple[Any, ...], deque[PooledConnection]] = {}

    def checkout(self, key: tuple[Any, ...]) -> PooledConnection | None:
        conns = self.idle.get(key)
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

    def checkin(self, conn: PooledConnection) -> None:
        conns = self.idle.get(conn.key)
        if conns is None:
            conns = self.idle.setdefault(conn.key, deque())
        now = time.monotonic()
        while conns and conns[0].idle_since < now - MAX_IDLE_SECONDS:
            conns.popleft().close()  # the oldest idle sockets expire, not just linger
        if len(conns) >= self.max_idle_per_host:
            conn.close()
        else:
            conn.idle_since = now
            conns.append(conn)

    def close(self) -> None:
        close_idle(self.idle)


def close_idle(idle: dict[tuple[Any, ...], deque[PooledConnection]]) -> None:
    for conns in list(idle.values()):
        while conns:
            conns.pop().close()


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
