"""The HTTP/1.1 wire format (upstream/http/heads.py): answers delivered in two pieces split at
every byte position still frame exactly, and a socket with stray bytes is not reused."""

from __future__ import annotations

from typing import Any

from qwenproxy.upstream.http.body import LeanBody
from qwenproxy.upstream.http.heads import read_head
from qwenproxy.upstream.http.pool import ConnectionPool, PooledConnection


def json_answer(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\n\r\n" + body


class ScriptedSocket:
    """A socket whose `recv` hands out the given pieces, one per call."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.closed = False

    def recv(self, size: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""

    def settimeout(self, value: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def read_all_split(wire: bytes, at: int) -> tuple[bytes, bool]:
    """Parse `wire` delivered in two pieces split at `at`: (body, socket kept for reuse)."""
    sock = ScriptedSocket([wire[:at], wire[at:]] if at else [wire])
    pool = ConnectionPool()
    conn = PooledConnection(sock, ("http", "h", 80, None))  # type: ignore[arg-type]
    answer = read_head(sock)  # type: ignore[arg-type]
    body = LeanBody(conn, pool.checkin, answer, 5.0)
    data = body.read()
    return data, bool(pool.idle.get(conn.key))


def test_chunked_framing_survives_any_split():
    wire = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    for at in range(len(wire)):
        assert read_all_split(wire, at) == (b"hello 0123456789", True), at


def test_length_framing_survives_any_split():
    wire = json_answer(b'{"a": [1, 2, 3]}')
    for at in range(len(wire)):
        assert read_all_split(wire, at) == (b'{"a": [1, 2, 3]}', True), at


def test_bytes_beyond_the_announced_length_spoil_the_connection():
    wire = json_answer(b"{}") + b"HTTP/1.1 200 OK\r\n"
    assert read_all_split(wire, 0) == (b"{}", False)
