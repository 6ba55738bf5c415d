"""OpenAICompatibleBackend against the fake upstream over real HTTP: a slow answer is
waited for in steps that let the caller give up (the client left)."""

from __future__ import annotations

import json

import gevent
import pytest

from qwenproxy.container import make_http_session
from qwenproxy.errors import UpstreamError
from qwenproxy.upstream.backends import OpenAICompatibleBackend
from qwenproxy.upstream.catalogue import ModelCatalog
from qwenproxy.upstream.credentials import StaticKeyCredentials
from qwenproxy.upstream.http import body as http1_body
from tests.fake_upstream import completion
from tests.upstream.http.raw_server import RawServer


class ClientLeft(Exception):
    pass


@pytest.fixture
def backend(fake_b):
    http = make_http_session()
    yield OpenAICompatibleBackend(
        "dashscope",
        http,
        [StaticKeyCredentials(fake_b.api_base, "sk-dash-1")],
        ModelCatalog(("m",)),
        (5.0, 10.0),
    )
    http.close()


def test_a_slowly_padded_answer_is_waited_for_in_steps_the_caller_can_end(backend, fake_b):
    """Some upstreams send the head at once and pad the body while the model works: the
    wait for the body must still let a caller that lost its client give up."""

    def padded(f, r):
        def body():
            yield b"\n"
            gevent.sleep(8)
            yield json.dumps(completion()).encode()

        return "200 OK", [("Content-Type", "application/json")], body()

    fake_b.script.append(padded)
    asked = []

    def while_waiting() -> None:
        asked.append(1)
        if len(asked) == 2:
            raise ClientLeft

    with pytest.raises(ClientLeft):
        backend.complete({"model": "m", "messages": []}, 0, while_waiting)
    assert len(asked) == 2  # about two seconds, not the eight the answer would take


def test_a_prompt_answer_never_asks(backend, fake_b):
    asked = []
    reply = backend.complete({"model": "m", "messages": []}, 0, lambda: asked.append(1))
    assert reply.body["choices"][0]["message"]["content"] == "Hello from fake"
    assert asked == []


# --- transport failures the client is told about plainly ------------------------------------


@pytest.fixture
def raw_backend():
    servers: list[RawServer] = []
    http = make_http_session()

    def start(handle) -> tuple[OpenAICompatibleBackend, RawServer]:
        server = RawServer(handle)
        servers.append(server)
        base = f"http://127.0.0.1:{server.port}/v1"
        credentials = [StaticKeyCredentials(base, "sk-raw-1")]
        return (
            OpenAICompatibleBackend("dashscope", http, credentials, ModelCatalog(("m",)), (5, 5)),
            server,
        )

    yield start
    http.close()
    for server in servers:
        server.close()


def test_an_upstream_that_reads_a_post_and_closes_is_a_502_and_gets_it_once(raw_backend):
    answer = json.dumps(completion()).encode()

    def answer_then_read_and_close(server: RawServer, sock) -> None:
        server.read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        server.read_request(sock)  # the second POST, read whole, never answered
        sock.close()

    backend, server = raw_backend(answer_then_read_and_close)
    backend.complete({"model": "m", "messages": []})
    with pytest.raises(UpstreamError) as caught:
        backend.complete({"model": "m", "messages": []})
    assert caught.value.status == 502
    assert "closed the connection without answering" in str(caught.value)
    assert "not sent again" in str(caught.value)
    assert len(server.requests) == 2  # one per call: the unanswered one was not replayed


def test_an_answer_over_the_size_cap_is_a_502(raw_backend, monkeypatch):
    monkeypatch.setattr(http1_body, "MAX_ANSWER_BYTES", 1000)
    answer = json.dumps(completion("x" * 2000)).encode()

    def big(server: RawServer, sock) -> None:
        server.read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))

    backend, _ = raw_backend(big)
    with pytest.raises(UpstreamError) as caught:
        backend.complete({"model": "m", "messages": []})
    assert caught.value.status == 502
    assert "over 1000 bytes" in str(caught.value)
