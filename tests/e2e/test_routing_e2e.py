"""End to end with two fake upstreams: commands and state across gunicorn workers,
failover with the openai SDK, no failover once bytes were sent, keep-alive pings."""

from __future__ import annotations

import openai
import pytest
import requests

from tests.e2e.conftest import openai_client
from tests.fake_upstream import chunk, reply_error, reply_stream

pytestmark = pytest.mark.e2e


def sdk(proxy, session: str | None = None) -> openai.OpenAI:
    headers = {"X-Session-ID": session} if session else None
    return openai_client(proxy, default_headers=headers)


def say(client, text, model="qwen3-coder-plus", **kwargs):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], **kwargs)


@pytest.fixture
def two_backends(fake, fake_b):
    return {"DASHSCOPE_API_KEY": "sk-dash-1", "DASHSCOPE_BASE_URL": fake_b.api_base}


def test_session_state_is_shared_between_two_workers(start_proxy, fake, fake_b, two_backends):
    proxy = start_proxy(WEB_CONCURRENCY="2", **two_backends)
    client = sdk(proxy, session="s1")
    reply = say(client, "!/set(model=dashscope:qwen-max)").choices[0].message.content
    assert reply.startswith("[qwenproxy] model set")
    for _ in range(20):  # spread over both workers; each must see the session's model
        say(sdk(proxy, session="s1"), "hi")
    assert len(fake_b.chat_requests) == 20 and fake.chat_requests == []


def test_oneoff_applies_once_across_workers(start_proxy, fake, fake_b, two_backends):
    proxy = start_proxy(WEB_CONCURRENCY="2", **two_backends)
    client = sdk(proxy, session="s2")
    say(client, "!/oneoff(dashscope:qwen-max)")
    for _ in range(6):
        say(client, "hi")
    assert len(fake_b.chat_requests) == 1 and len(fake.chat_requests) == 5


def test_stream_failover_before_the_first_byte(start_proxy, fake, fake_b, two_backends):
    proxy = start_proxy(FAILOVER_ROUTES='{"main": ["dashscope:qwen-max", "qwen-oauth:qwen-plus"]}',
                        **two_backends)
    fake_b.script.append(reply_error(500, "down"))
    stream = say(sdk(proxy), "hi", model="main", stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "Hello from fake"
    assert len(fake_b.chat_requests) == 1 and len(fake.chat_requests) == 1


def test_no_failover_after_the_first_byte(start_proxy, fake, fake_b, two_backends):
    proxy = start_proxy(FAILOVER_ROUTES='{"main": ["dashscope:qwen-max", "qwen-oauth:qwen-plus"]}',
                        **two_backends)
    fake_b.script.append(reply_stream([chunk({"content": "partial "})], done=False))
    stream = say(sdk(proxy), "hi", model="main", stream=True)
    seen = []
    with pytest.raises(openai.APIError) as caught:
        for c in stream:
            seen.append(c.choices[0].delta.content)
    assert seen == ["partial "]
    assert "closed the stream" in str(caught.value)
    assert fake.chat_requests == []


def test_keepalive_pings_during_upstream_silence(start_proxy, fake):
    events = [chunk({"content": "a"}), chunk({"content": "b"}), chunk({}, finish="stop")]
    fake.script.append(reply_stream(events, delay=0.7))
    proxy = start_proxy(STREAM_KEEPALIVE="0.2")
    with requests.post(proxy.url + "/v1/chat/completions", stream=True, timeout=20,
                       json={"model": "m", "stream": True,
                             "messages": [{"role": "user", "content": "hi"}]}) as response:
        raw = b"".join(response.iter_content(chunk_size=None))
    frames = raw.split(b"\n\n")
    assert b": ping" in frames
    assert frames[-2] == b"data: [DONE]"
    fake.script.append(reply_stream(events, delay=0.5))
    text = "".join(c.choices[0].delta.content or ""
                   for c in say(sdk(proxy), "hi", stream=True) if c.choices)
    assert text == "ab"
