"""The upstream transport (services/transport.py) mounted on a `requests.Session`, against
loopback servers that answer with exact bytes — framing, keep-alive reuse, stale sockets,
keep-alive waits, timeouts, TLS and malformed answers."""

from __future__ import annotations

import base64
import gzip
import socket
import ssl
import threading
import zlib
from collections.abc import Callable

import pytest
import requests
import trustme

from qwenproxy.services import http1, transport
from qwenproxy.services.transport import LeanAdapter, peer_closed

Handler = Callable[["RawServer", socket.socket], None]


class RawServer:
    """A loopback TCP server that runs `handle(server, sock)` for each connection."""

    def __init__(self, handle: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handle = handle
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://localhost:{self.port}/v1/chat/completions"

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            if self.tls:
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError):
                    sock.close()
                    continue
            self._socks.append(sock)
            threading.Thread(target=self._run, args=(sock,), daemon=True).start()

    def _run(self, sock: socket.socket) -> None:
        try:
            self.handle(self, sock)
        except OSError:
            pass

    def read_request(self, sock: socket.socket) -> bytes | None:
        """One request (head + Content-Length body), or None when the client hung up."""
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                return None
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += sock.recv(65536)
        self.requests.append(head + b"\r\n\r\n" + body)
        return head + b"\r\n\r\n" + body

    def close(self) -> None:
        self.listener.close()
        for sock in self._socks:
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture
def serve():
    servers: list[RawServer] = []

    def start(handle: Handler, tls: ssl.SSLContext | None = None) -> RawServer:
        server = RawServer(handle, tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def http():
    session = requests.Session()
    session.trust_env = False
    adapter = LeanAdapter(max_idle_per_host=4)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    yield session
    session.close()


def answer_forever(*answers: bytes) -> Handler:
    """Answer each request on a connection with the next of `answers` (the last repeats)."""

    def handle(server: RawServer, sock: socket.socket) -> None:
        index = 0
        while server.read_request(sock) is not None:
            sock.sendall(answers[min(index, len(answers) - 1)])
            index += 1

    return handle


def json_answer(body: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def chunked(*pieces: bytes) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
    return out + b"0\r\n\r\n"


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
    pooled = http.get_adapter(server.url)._idle
    (conn,) = [c for conns in pooled.values() for c in conns]
    conn.sock.shutdown(socket.SHUT_WR)  # our side of it can no longer be written
    assert http.post(server.url, data=b"{}", timeout=(5, 5)).json() == {"n": 2}
    assert server.connections == 2
    assert sum(r.startswith(b"POST ") for r in server.requests) == 1


def test_idle_connections_expire(serve, http, monkeypatch):
    server = serve(answer_forever(json_answer(b"{}")))
    http.post(server.url, data=b"{}", timeout=(5, 5))
    monkeypatch.setattr(transport, "MAX_IDLE_SECONDS", 0.0)
    http.post(server.url, data=b"{}", timeout=(5, 5))
    assert server.connections == 2


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


def test_gzip_body_is_decoded(serve, http):
    packed = gzip.compress(b'{"answer": "' + b"z" * 5000 + b'"}')
    server = serve(answer_forever(json_answer(packed, "Content-Encoding: gzip\r\n")))
    assert http.post(server.url, data=b"{}", timeout=(5, 5)).json()["answer"] == "z" * 5000


def test_close_delimited_body_is_read_to_the_end(serve, http):
    def http10(server: RawServer, sock: socket.socket) -> None:
        server.read_request(sock)
        sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        sock.close()

    server = serve(http10)
    assert http.post(server.url, data=b"{}", timeout=(5, 5)).content == b"all of it"
    assert http.post(server.url, data=b"{}", timeout=(5, 5)).content == b"all of it"
    assert server.connections == 2


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-15)
    return packer.compress(data) + packer.flush()


@pytest.mark.parametrize("pack", [zlib.compress, raw_deflate], ids=["zlib", "raw"])
def test_deflate_bodies_are_decoded_zlib_wrapped_or_raw(serve, http, pack):
    text = b'{"answer": "' + b"d" * 3000 + b'"}'
    server = serve(answer_forever(json_answer(pack(text), "Content-Encoding: deflate\r\n")))
    assert http.post(server.url, data=b"{}", timeout=(5, 5)).content == text
    assert http.post(server.url, data=b"{}", timeout=(5, 5)).content == text
    assert server.connections == 1


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


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gzip-bomb"])
def test_an_answer_over_the_size_cap_fails_and_its_connection_is_dropped(
    serve, http, monkeypatch, packed
):
    monkeypatch.setattr(http1, "MAX_ANSWER_BYTES", 10_000)
    big = b'{"a": "' + b"x" * 10_000 + b'"}'
    body, extra = (gzip.compress(big), "Content-Encoding: gzip\r\n") if packed else (big, "")
    answers = [json_answer(body, extra), json_answer(b"{}")]

    def big_then_small(server: RawServer, sock: socket.socket) -> None:
        while server.read_request(sock) is not None:
            sock.sendall(answers[min(len(server.requests), 2) - 1])

    server = serve(big_then_small)
    with pytest.raises(http1.AnswerTooLarge, match="over 10000 bytes"):
        http.post(server.url, data=b"{}", timeout=(5, 5))
    assert http.post(server.url, data=b"{}", timeout=(5, 5)).json() == {}
    assert server.connections == 2  # the over-cap answer's connection was not pooled


def test_an_event_stream_caps_one_line_not_the_whole_stream(serve, http, monkeypatch):
    monkeypatch.setattr(http1, "MAX_EVENT_LINE_BYTES", 100)
    event = b"data: " + b"e" * 80 + b"\n\n"
    head = OK + b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

    def stream(*pieces: bytes) -> Handler:
        def handle(server: RawServer, sock: socket.socket) -> None:
            server.read_request(sock)
            sock.sendall(head + chunked(*pieces))
            server.read_request(sock)

        return handle

    fine = serve(stream(*[event] * 50))  # 4,400 bytes in all, no line over 100
    response = http.post(fine.url, data=b"{}", timeout=(5, 5), stream=True)
    assert b"".join(response.raw.stream()) == event * 50
    long_line = b"data: " + b"l" * 60
    over = serve(stream(event, long_line, long_line, b"\n\n"))  # one line cut in two pieces
    response = http.post(over.url, data=b"{}", timeout=(5, 5), stream=True)
    with pytest.raises(http1.AnswerTooLarge, match="line over 100 bytes"):
        b"".join(response.raw.stream())
    assert response.raw.closed


def test_informational_answers_are_skipped(serve, http):
    server = serve(answer_forever(b"HTTP/1.1 100 Continue\r\n\r\n" + json_answer(b"[1]")))
    assert http.post(server.url, data=b"{}", timeout=(5, 5)).json() == [1]


OK = b"HTTP/1.1 200 OK\r\n"
CHUNKED = OK + b"Transfer-Encoding: chunked\r\n\r\n"
BROKEN_BODY = requests.exceptions.ChunkedEncodingError


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


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def tls_server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", UPSTREAM_NAME).configure_cert(context)
    return context


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


# --- through an HTTP proxy (CONNECT tunnels) --------------------------------------------------


UPSTREAM_NAME = "upstream.test"  # only the proxy resolves it (to 127.0.0.1)


def via_name(url: str) -> str:
    return url.replace("://localhost:", f"://{UPSTREAM_NAME}:")


class TunnelingProxy:
    """A loopback HTTP proxy that answers CONNECT (optionally asking for credentials) and
    relays bytes both ways; it records each CONNECT request's head. It resolves
    UPSTREAM_NAME to 127.0.0.1, so that upstream is not "loopback" to the client."""

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        self.connects: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        auth = f"{self.credentials}@" if self.credentials else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            piece = client.recv(4096)
            if not piece:
                client.close()
                return
            head += piece
        self.connects.append(head)
        if self.credentials:
            wanted = "Basic " + base64.b64encode(self.credentials.encode()).decode()
            if f"Proxy-Authorization: {wanted}".encode() not in head:
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                client.close()
                return
        target = head.split(b" ")[1].decode()
        host, _, port = target.rpartition(":")
        address = "127.0.0.1" if host == UPSTREAM_NAME else host
        upstream = socket.create_connection((address, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
        back.start()
        self._pipe(client, upstream)
        back.join(10)
        client.close()
        upstream.close()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):  # one side is done: end the other direction too
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def proxied_session(proxy: TunnelingProxy, bundle: str, no_proxy=()) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    adapter = LeanAdapter(proxy=proxy.url, no_proxy=no_proxy, ca_bundle=bundle)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


@pytest.fixture
def bundle(ca, tmp_path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def test_https_upstreams_go_through_the_proxy_with_its_credentials(serve, ca, bundle):
    server = serve(answer_forever(json_answer(b'{"via": "tunnel"}')), tls=tls_server_context(ca))
    proxy = TunnelingProxy("corp user:s3cret pass")
    with proxied_session(proxy, bundle) as http:
        for _ in range(2):  # the CA bundle is the adapter's default: no verify= needed
            answer = http.post(via_name(server.url), data=b"{}", timeout=(5, 5))
            assert answer.json() == {"via": "tunnel"}
    proxy.close()
    assert len(proxy.connects) == 1  # one tunnel, kept alive for both requests
    connect = proxy.connects[0]
    assert connect.startswith(f"CONNECT {UPSTREAM_NAME}:{server.port} HTTP/1.1\r\n".encode())


def test_a_proxy_asking_for_credentials_is_a_clear_error_without_them(serve, ca, bundle):
    server = serve(answer_forever(json_answer(b"{}")), tls=tls_server_context(ca))
    proxy = TunnelingProxy("user:right")
    wrong = TunnelingProxy.__new__(TunnelingProxy)
    wrong.credentials, wrong.port = "user:wrong-pass", proxy.port
    with proxied_session(wrong, bundle) as http:
        with pytest.raises(requests.exceptions.ProxyError) as caught:
            http.post(via_name(server.url), data=b"{}", timeout=(5, 5))
    proxy.close()
    assert "407" in str(caught.value) and "UPSTREAM_PROXY" in str(caught.value)
    assert "wrong-pass" not in str(caught.value)
    assert server.connections == 0


def test_no_proxy_hosts_and_plain_http_go_direct(serve, ca, bundle):
    tls_server = serve(answer_forever(json_answer(b"{}")), tls=tls_server_context(ca))
    plain = serve(answer_forever(json_answer(b"{}")))
    proxy = TunnelingProxy()
    with proxied_session(proxy, bundle) as http:
        http.post(tls_server.url, data=b"{}", timeout=(5, 5))  # localhost: never proxied
        http.post(plain.url, data=b"{}", timeout=(5, 5))
    proxy.close()
    assert proxy.connects == []
    assert tls_server.connections == 1
    assert plain.connections == 1


class ForwardProxy(RawServer):
    """A loopback forward proxy for plain http: it takes absolute-form requests (asking
    for credentials when it has some), records them, and forwards each to UPSTREAM_NAME's
    port on 127.0.0.1 in origin form over one upstream connection per client one."""

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        super().__init__(self._forward)

    def _forward(self, server: RawServer, client: socket.socket) -> None:
        upstream = None
        while (request := self.read_request(client)) is not None:
            if self.credentials:
                wanted = "Basic " + base64.b64encode(self.credentials.encode()).decode()
                if f"Proxy-Authorization: {wanted}\r\n".encode() not in request:
                    client.sendall(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"
                    )
                    continue
            head, _, body = request.partition(b"\r\n\r\n")
            line, _, rest = head.partition(b"\r\n")
            method, target, version = line.split(b" ")
            prefix = f"http://{UPSTREAM_NAME}:".encode()
            assert target.startswith(prefix), target
            port, _, path = target[len(prefix) :].partition(b"/")
            kept = b"".join(
                h + b"\r\n"
                for h in rest.split(b"\r\n")
                if not h.lower().startswith(b"proxy-authorization:")
            )
            if upstream is None:
                upstream = socket.create_connection(("127.0.0.1", int(port)))
            upstream.sendall(b"%s /%s %s\r\n%s\r\n%s" % (method, path, version, kept, body))
            client.sendall(self.read_answer(upstream))
        if upstream is not None:
            upstream.close()

    @staticmethod
    def read_answer(sock: socket.socket) -> bytes:
        """One Content-Length answer."""
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += sock.recv(65536)
        return head + b"\r\n\r\n" + body


def forwarding_session(proxy: ForwardProxy, no_proxy=()) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    adapter = LeanAdapter(http_proxy=f"http://{proxy.credentials or 'x'}@127.0.0.1:{proxy.port}",
                          no_proxy=no_proxy)
    session.mount("http://", adapter)
    return session


def test_plain_http_upstreams_go_through_the_http_proxy_in_absolute_form(serve):
    upstream = serve(answer_forever(json_answer(b'{"via": "forward"}')))
    proxy = ForwardProxy("corp user:s3cret")
    with forwarding_session(proxy) as http:
        for _ in range(2):
            answer = http.post(via_name(upstream.url), data=b'{"q": 1}', timeout=(5, 5))
            assert answer.json() == {"via": "forward"}
        http.post(upstream.url, data=b"{}", timeout=(5, 5))  # localhost: direct
    proxy.close()
    assert proxy.connections == 1  # kept alive, like any pooled connection
    target = f"POST http://{UPSTREAM_NAME}:{upstream.port}/v1/chat/completions HTTP/1.1\r\n"
    assert all(r.startswith(target.encode()) for r in proxy.requests)
    assert all(f"Host: {UPSTREAM_NAME}:{upstream.port}\r\n".encode() in r for r in proxy.requests)
    assert len(proxy.requests) == 2
    assert all(r.endswith(b'{"q": 1}') for r in upstream.requests[:2])
    assert all(b"Proxy-Authorization" not in r for r in upstream.requests)
    assert upstream.connections == 2  # one from the proxy, one direct


def test_an_http_proxy_asking_for_credentials_is_a_proxy_error_naming_the_setting(serve):
    upstream = serve(answer_forever(json_answer(b"{}")))
    proxy = ForwardProxy("user:right")
    wrong = ForwardProxy.__new__(ForwardProxy)
    wrong.credentials, wrong.port = "user:wrong-pass", proxy.port
    with forwarding_session(wrong) as http:
        with pytest.raises(requests.exceptions.ProxyError) as caught:
            http.post(via_name(upstream.url), data=b"{}", timeout=(5, 5))
    proxy.close()
    assert "407" in str(caught.value) and "UPSTREAM_HTTP_PROXY" in str(caught.value)
    assert "wrong-pass" not in str(caught.value)
    assert upstream.connections == 0


@pytest.mark.parametrize(
    ("host", "no_proxy", "proxied"),
    [
        ("dashscope.aliyuncs.com", (), True),
        ("127.0.0.1", (), False),
        ("localhost", (), False),
        ("::1", (), False),
        ("dashscope.aliyuncs.com", (".aliyuncs.com",), False),
        ("dashscope.aliyuncs.com", ("aliyuncs.com",), False),
        ("notaliyuncs.com", ("aliyuncs.com",), True),
        ("10.1.2.3", ("10.0.0.0/8",), False),
        ("11.1.2.3", ("10.0.0.0/8",), True),
        ("openrouter.ai", ("*",), False),
        ("::ffff:127.0.0.1", (), False),
        ("fd00::1", ("fd00::1",), False),
        ("api.internal", (".internal",), False),
    ],
)
def test_which_hosts_the_proxy_serves(host, no_proxy, proxied):
    proxy = transport.TunnelProxy.from_url("http://proxy.corp:3128", no_proxy)
    assert proxy.applies_to(host) is proxied
