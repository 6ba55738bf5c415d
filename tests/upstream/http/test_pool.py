"""The pool of idle upstream connections and socket poll state
(upstream/http/pool.py): idle connections expire, and a peer's close is told from
bytes waiting to be read."""

from __future__ import annotations

import socket

from qwenproxy.upstream.http import pool as upstream_pool
from qwenproxy.upstream.http.pool import peer_closed
from tests.upstream.http.raw_server import answer_forever, json_answer


def test_idle_connections_expire(serve, http, monkeypatch):
    server = serve(answer_forever(json_answer(b"{}")))
    http.post(server.url, data=b"{}", timeout=(5, 5))
    monkeypatch.setattr(upstream_pool, "MAX_IDLE_SECONDS", 0.0)
    http.post(server.url, data=b"{}", timeout=(5, 5))
    assert server.connections == 2


def test_peer_closed_tells_a_close_from_waiting_bytes():
    for how in ("close", "shutdown"):
        ours, theirs = socket.socketpair()
        with ours:
            assert not peer_closed(ours)
            theirs.sendall(b"next request")  # pipelined bytes are not a close
            assert not peer_closed(ours)
            if how == "close":
                theirs.close()
            else:
                theirs.shutdown(socket.SHUT_WR)
            assert peer_closed(ours), how
            theirs.close()
