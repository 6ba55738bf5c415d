"""OpenAICompatibleBackend against the fake upstream over real HTTP: a slow answer is
waited for in steps that let the caller give up (the client left)."""

from __future__ import annotations

import json

import gevent
import pytest

from qwenproxy.services.backends import OpenAICompatibleBackend, StaticKeyCredentials
from qwenproxy.services.container import make_http_session
from qwenproxy.services.models import ModelCatalog
from tests.fake_upstream import completion


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
