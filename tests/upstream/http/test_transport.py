"""The upstream transport (upstream/http/transport.py) mounted on a `requests.Session`, against
loopback servers that answer with exact bytes — framing, keep-alive reuse, stale sockets,
keep-alive waits, timeouts, TLS and malformed answers."""

from __future__ import annotations

import socket
import threading

import pytest
import requests

from qwenproxy.upstream.http import heads as http1
from qwenproxy.upstream.http import transport
from tests.upstream.http.raw_server import (
    CHUNKED,
    OK,
    RawServer,
    answer_forever,
    chunked,
    json_answer,
    tls_server_context,
)

BROKEN_BODY = requests.exceptions.ChunkedEncodingError


# --- over real sockets ----------------------------------------------------------------------


def test_answers_with_a_length_reuse_one_connection(serve, http):
    server = serve(answer_forever(json_answer(b'{"ok": 1}', "X-Request-Id: r-1\r\n")))
    for _ in range(3):
        response = http.post(server.url, data=b'{"q": 1}', timeout=(5, 5))
        assert response.status_code == 200
        assert response.json() == {"ok": 1}
        assert response.headers["x-request-id"] == "r-1"
    assert server.connections == 1
    request = server.requests[0]
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: localhost:{server.port}\r\n".encode() in request
    assert b"\r\nContent-Length: 8\r\n" in request
    assert request.endswith(b'\r\n\r\n{"q": 1}')


def test_chunked_answer_and_error_status_come_through(serve, http):
    body = chunked(b'{"error": ', b'{"message": "slow down"}}')
    answer = b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = serve(answer_forever(answer + body))
    response = http.post(server.url, data=b"{}", timeout=(5, 5))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json() == {"error": {"message": "slow down"}}
    http.post(server.url, data=b"{}", timeout=(5, 5))
    assert server.connections == 1  # the chunked body was read to its end: reused


def test_a_pooled_connection_the_server_closed_is_not_used(serve, http):
    closed = threading.Semaphore(0)

    def answer_once_then_hang_up(server: RawServer, sock: socket.socket) -> None:
        server.read_request(sock)
        sock.sendall(json_answer(b"{}"))
        sock.close()  # an upstream closing idle keep-alive connections
        closed.release()

    server = serve(answer_once_then_hang_up)
    for _ in range(3):
        assert http.post(server.url, data=b"{}", timeout=(5, 5)).json() == {}
        assert closed.acquire(timeout=5)
    assert server.connections == 3


def test_a_request_crossing_the_servers_idle_close_is_sent_again(serve, http):
    def second_request_unanswered(server: RawServer, sock: socket.socket) -> None:
        server.read_request(sock)
        sock.sendall(json_answer(b'{"n": 1}'))
        if server.connections == 1:
            server.read_request(sock)  # the close crossed this request: no answer
            sock.close()
            return
        while server.read_request(sock) is not None:
            sock.sendall(json_answer(b'{"n": 1}'))

    server = serve(second_request_unanswered)
    assert http.get(server.url, timeout=(5, 5)).json() == {"n": 1}
    assert http.get(server.url, timeout=(5, 5)).json() == {"n": 1}  # idempotent: again
    assert server.connections == 2


def fill_pool(http: requests.Session, url: str, count: int) -> None:
    """Leave `count` idle keep-alive connections in the pool."""
    held = [http.get(url, timeout=(5, 5), stream=True) for _ in range(count)]
    for response in held:
        assert response.content
        response.close()


def answer_first_request_of_each_connection_only(server: RawServer, sock: socket.socket) -> None:
    server.read_request(sock)
    sock.sendall(json_answer(b'{"n": 1}'))
    server.read_request(sock)  # later requests on this connection: closed unanswered
    sock.close()


def test_a_request_is_sent_again_at_most_once(serve, http):
    server = serve(answer_first_request_of_each_connection_only)
    fill_pool(http, server.url, 3)
    served = len(server.requests)
    assert http.get(server.url, timeout=(5, 5)).json() == {"n": 1}
    assert len(server.requests) == served + 2  # once on a pooled socket, once on a new one
    assert server.connections == 4


def test_a_close_that_comes_late_is_an_error_not_a_second_request(serve, http, monkeypatch):
    monkeypatch.setattr(transport, "CROSSED_CLOSE_SECONDS", 0.0)  # every close is "late"
    server = serve(answer_first_request_of_each_connection_only)
    fill_pool(http, server.url, 1)
    with pytest.raises(requests.ConnectionError, match="closed"):
        http.get(server.url, timeout=(5, 5))
    assert len(server.requests) == 2
    assert server.connections == 1


def test_a_post_the_upstream_read_and_closed_on_is_never_sent_again(serve, http):
    """An upstream that reads the whole POST and closes without answering may have acted
    on it (a completion billed): it receives it exactly once, and the caller is told."""
    server = serve(answer_first_request_of_each_connection_only)
    fill_pool(http, server.url, 1)
    with pytest.raises(transport.ClosedWithoutAnswer, match="not sent again"):
        http.post(server.url, data=b'{"bill": 1}', timeout=(5, 5))
    posts = [r for r in server.requests if r.startswith(b"POST ")]
    assert len(posts) == 1 and posts[0].endswith(b'{"bill": 1}')
    assert server.connections == 1


def test_a_post_on_a_connection_closed_before_writing_goes_on_a_new_one(serve, http):
    """Nothing of the request reached the server (the write itself failed): the server
    had closed first, and the POST goes once, on a new connection."""
    server = serve(answer_forever(json_answer(b'{"n": 2}')))
    fill_pool(http, server.url, 1)
    pooled = http.get_adapter(server.url)._pool.idle
    (conn,) = [c for conns in pooled.values() for c in conns]
    conn.sock.shutdown(socket.SHUT_WR)  # our side of it can no longer be written
    assert http.post(server.url, data=b"{}", timeout=(5, 5)).json() == {"n": 2}
    assert server.connections == 2
    assert sum(r.startswith(b"POST ") for r in server.requests) == 1



def test_a_new_connection_closed_without_an_answer_is_not_retried(serve, http):
    def hang_up(server: RawServer, sock: socket.socket) -> None:
        server.read_request(sock)
        sock.close()

    server = serve(hang_up)
    with pytest.raises(requests.ConnectionError, match="closed"):
        http.post(server.url, data=b"{}", timeout=(5, 5))
    assert server.connections == 1


def test_a_half_read_answer_is_not_reused(serve, http):
    server = serve(answer_forever(json_answer(b"x" * 100_000)))
    response = http.post(server.url, data=b"{}", timeout=(5, 5), stream=True)
    assert len(response.raw.read(10)) == 10
    response.close()
    assert len(http.post(server.url, data=b"{}", timeout=(5, 5)).content) == 100_000
    assert server.connections == 2


def test_stream_waits_return_none_without_losing_bytes(serve, http):
    go = threading.Event()

    def stream_in_two_parts(server: RawServer, sock: socket.socket) -> None:
        server.read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.sendall(b"6\r\nfirst\n\r\n7\r\nsec")  # a chunk cut in the middle
        go.wait(10)
        sock.sendall(b"ond\n\r\n0\r\n\r\n")

    server = serve(stream_in_two_parts)
    response = http.post(server.url, data=b"{}", timeout=(5, 5), stream=True)
    raw = response.raw
    received = b""
    while len(received) < 9:  # "first\n" and the "sec" of the cut chunk
        piece = raw.read_chunk(5)
        assert piece
        received += piece
    assert raw.read_chunk(0.05) is None  # silence: a keep-alive moment, nothing lost
    assert raw.read_chunk(0.05) is None
    go.set()
    while piece := raw.read_chunk(5):
        received += piece
    assert received == b"first\nsecond\n"
    assert raw.read_chunk(5) == b""


def test_silence_longer_than_the_read_timeout_fails_even_between_waits(serve, http):
    def headers_then_silence(server: RawServer, sock: socket.socket) -> None:
        server.read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.recv(1)  # until the client gives up

    server = serve(headers_then_silence)
    response = http.post(server.url, data=b"{}", timeout=(5, 0.3), stream=True)
    waits = 0
    with pytest.raises(requests.ReadTimeout):
        while True:
            assert response.raw.read_chunk(0.1) is None
            waits += 1
    assert 2 <= waits <= 3


def test_no_answer_within_the_read_timeout(serve, http):
    def never_answer(server: RawServer, sock: socket.socket) -> None:
        server.read_request(sock)
        sock.recv(1)

    server = serve(never_answer)
    with pytest.raises(requests.ReadTimeout):
        http.post(server.url, data=b"{}", timeout=(5, 0.2))


def test_close_delimited_body_is_read_to_the_end(serve, http):
    def http10(server: RawServer, sock: socket.socket) -> None:
        server.read_request(sock)
        sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        sock.close()

    server = serve(http10)
    assert http.post(server.url, data=b"{}", timeout=(5, 5)).content == b"all of it"
    assert http.post(server.url, data=b"{}", timeout=(5, 5)).content == b"all of it"
    assert server.connections == 2


@pytest.mark.parametrize("coding", ["chunked", "Chunked", " chunked "])
def test_a_chunked_transfer_coding_is_read(serve, http, coding):
    answer = OK + f"Transfer-Encoding:{coding}\r\n\r\n".encode() + chunked(b"[", b"7]")
    server = serve(answer_forever(answer))
    assert http.post(server.url, data=b"{}", timeout=(5, 5)).json() == [7]


@pytest.mark.parametrize("coding", ["xchunked", "chunked, gzip", "gzip, chunked", "gzip"])
def test_transfer_codings_are_parsed_exactly_not_as_a_substring(serve, http, coding):
    """Transfer-Encoding is a comma list whose final coding must be `chunked`; the proxy
    asks for no other (it sends no TE), so an answer in another coding is unreadable."""

    def once_then_close(server: RawServer, sock: socket.socket) -> None:
        server.read_request(sock)
        sock.sendall(OK + f"Transfer-Encoding: {coding}\r\n\r\n".encode() + chunked(b"[7]"))
        sock.close()

    server = serve(once_then_close)
    with pytest.raises(requests.ConnectionError, match="Transfer-Encoding"):
        http.post(server.url, data=b"{}", timeout=(5, 5))



def test_informational_answers_are_skipped(serve, http):
    server = serve(answer_forever(b"HTTP/1.1 100 Continue\r\n\r\n" + json_answer(b"[1]")))
    assert http.post(server.url, data=b"{}", timeout=(5, 5)).json() == [1]



@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"SMTP ready\r\n\r\n", requests.ConnectionError),
        (OK + b"Content-Length: 1, 2\r\n\r\n", requests.ConnectionError),
        (OK + b"Bad Header\r\n\r\n", requests.ConnectionError),
        (OK + b"Content-Length: 10\r\n\r\nshort", BROKEN_BODY),
        (CHUNKED + b"-5\r\n", BROKEN_BODY),
        (CHUNKED + b"0x5\r\n", BROKEN_BODY),
        (CHUNKED + b"2\r\nabc\r\n", BROKEN_BODY),
        (CHUNKED + b"5\r\nab", BROKEN_BODY),
        (OK + b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\nxx", requests.RequestException),
    ],
)
def test_malformed_answers_raise_request_errors(serve, http, answer, error):
    def once_then_close(server: RawServer, sock: socket.socket) -> None:
        server.read_request(sock)
        sock.sendall(answer)
        sock.close()

    server = serve(once_then_close)
    with pytest.raises(error):
        http.post(server.url, data=b"{}", timeout=(5, 5))


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (OK + b"X-Big: " + b"b" * 200_000, requests.ConnectionError),  # a head without end
        (CHUNKED + b"1\r\nx\r\n0\r\nX-Trailer: " + b"t" * 200_000, BROKEN_BODY),
        (CHUNKED + b"1;" + b"e" * 200_000, BROKEN_BODY),  # a chunk line without end
    ],
    ids=["head", "trailers", "chunk-line"],
)
def test_endless_heads_chunk_lines_and_trailers_are_refused(serve, http, answer, error):
    """llhttp keeps no limit of its own on these: the transport's MAX_HEAD is theirs."""

    def send_then_hold(server: RawServer, sock: socket.socket) -> None:
        server.read_request(sock)
        sock.sendall(answer)
        sock.recv(1)  # holds the connection open: only the cap can end the read

    server = serve(send_then_hold)
    with pytest.raises(error):
        http.post(server.url, data=b"{}", timeout=(5, 5))  # reads the body (not a stream)


def test_header_injection_is_refused_before_anything_is_sent(serve, http):
    server = serve(answer_forever(json_answer(b"{}")))
    with pytest.raises(requests.exceptions.InvalidHeader):
        http.post(server.url, data=b"{}", headers={"X-Evil": "a\r\nHost: elsewhere"})
    assert server.requests == []


def test_refused_connection_is_a_connection_error(http):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(requests.ConnectionError):
        http.post(f"http://127.0.0.1:{port}/x", data=b"{}", timeout=(2, 2))



def test_https_verifies_the_upstream_certificate(serve, http, ca, tmp_path):
    server = serve(answer_forever(json_answer(b'{"tls": true}')), tls=tls_server_context(ca))
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    response = http.post(server.url, data=b"{}", timeout=(5, 5), verify=str(bundle))
    assert response.json() == {"tls": True}
    http.post(server.url, data=b"{}", timeout=(5, 5), verify=str(bundle))
    assert server.connections == 1


def test_https_refuses_an_unknown_certificate_authority(serve, http, ca):
    server = serve(answer_forever(json_answer(b"{}")), tls=tls_server_context(ca))
    with pytest.raises(requests.exceptions.SSLError):
        http.post(server.url, data=b"{}", timeout=(5, 5))  # certifi's bundle: not our CA


# --- waiting for an answer while the client may leave -----------------------------------------


class ClientLeft(Exception):
    pass


def test_a_long_wait_for_the_answer_asks_while_waiting_and_stops_when_told(
    serve, http, monkeypatch
):
    monkeypatch.setattr(http1, "WAIT_CHECK_SECONDS", 0.05)
    hung_up = threading.Event()

    def never_answer(server: RawServer, sock: socket.socket) -> None:
        server.read_request(sock)
        if sock.recv(1) == b"":  # the proxy side closed the connection
            hung_up.set()

    server = serve(never_answer)
    asked = []

    def while_waiting() -> None:
        asked.append(1)
        if len(asked) == 3:
            raise ClientLeft

    request = requests.Request("POST", server.url, data=b"{}").prepare()
    adapter = http.get_adapter(server.url)
    with pytest.raises(ClientLeft):
        adapter.send(request, stream=True, timeout=(5, 5), while_waiting=while_waiting)
    assert len(asked) == 3
    assert hung_up.wait(5)  # the upstream connection is closed, not pooled


def test_while_waiting_keeps_the_read_timeout(serve, http, monkeypatch):
    monkeypatch.setattr(http1, "WAIT_CHECK_SECONDS", 0.05)

    def never_answer(server: RawServer, sock: socket.socket) -> None:
        server.read_request(sock)
        sock.recv(1)

    server = serve(never_answer)
    request = requests.Request("POST", server.url, data=b"{}").prepare()
    asked = []
    with pytest.raises(requests.ReadTimeout):
        http.get_adapter(server.url).send(
            request, stream=True, timeout=(5, 0.3), while_waiting=lambda: asked.append(1)
        )
    assert 3 <= len(asked) <= 6
