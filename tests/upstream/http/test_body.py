"""Answer bodies (upstream/http/body.py) through the transport: content decoding (gzip,
zlib-wrapped and raw deflate) and the caps on a whole answer and on one event-stream line."""

from __future__ import annotations

import gzip
import socket
import zlib

import pytest

from qwenproxy.upstream.http import body as http1_body
from qwenproxy.upstream.http import heads as http1
from tests.upstream.http.raw_server import (
    OK,
    Handler,
    RawServer,
    answer_forever,
    chunked,
    json_answer,
)


def test_gzip_body_is_decoded(serve, http):
    packed = gzip.compress(b'{"answer": "' + b"z" * 5000 + b'"}')
    server = serve(answer_forever(json_answer(packed, "Content-Encoding: gzip\r\n")))
    assert http.post(server.url, data=b"{}", timeout=(5, 5)).json()["answer"] == "z" * 5000


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


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gzip-bomb"])
def test_an_answer_over_the_size_cap_fails_and_its_connection_is_dropped(
    serve, http, monkeypatch, packed
):
    monkeypatch.setattr(http1_body, "MAX_ANSWER_BYTES", 10_000)
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
    monkeypatch.setattr(http1_body, "MAX_EVENT_LINE_BYTES", 100)
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
