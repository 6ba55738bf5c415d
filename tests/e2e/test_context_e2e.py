"""The context guard end to end: the real app under gunicorn/gevent, the official `openai`
and `anthropic` SDKs, and fake upstreams that enforce a window and refuse in a provider's
words."""

from __future__ import annotations

import json
import re
import time

import anthropic
import openai
import pytest
import requests

from tests.e2e.conftest import openai_client

pytestmark = pytest.mark.e2e

INFO = {"qwen-oauth": {"coder-model": {"context_length": 150_000, "max_output_tokens": 65_536}}}


@pytest.fixture
def proxy(start_proxy, fake, fake_b):
    fake_b.context_window, fake_b.length_wording = 1_000, "openrouter"
    return start_proxy(
        MODEL_INFO=json.dumps(INFO),
        DASHSCOPE_API_KEY="sk-dash-1",
        DASHSCOPE_BASE_URL=fake_b.api_base,
        ANTHROPIC_MODEL_MAP="qwen-oauth:qwen3-coder-plus",
    )


@pytest.fixture
def claude(proxy):
    client = anthropic.Anthropic(base_url=proxy.url, api_key="x", max_retries=0, timeout=30)
    yield client
    client.close()


LONG = "hello " * 160_000  # 160,000 tokens and more: over the 150,000 window


def test_every_door_answers_a_too_long_prompt_in_its_clients_shape(proxy, claude, fake):
    codex = openai_client(proxy, timeout=30)
    with pytest.raises(openai.BadRequestError) as chat:
        codex.chat.completions.create(
            model="qwen3-coder-plus", messages=[{"role": "user", "content": LONG}]
        )
    assert chat.value.code == "context_length_exceeded"
    assert re.fullmatch(
        r"This model's maximum context length is 150000 tokens\. However, your messages "
        r"resulted in 1600\d\d tokens\.",
        chat.value.body["message"],
    )
    with pytest.raises(anthropic.BadRequestError) as messages:
        claude.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=32000,
            stream=True,
            messages=[{"role": "user", "content": LONG}],
        )
    assert messages.value.body["error"]["type"] == "invalid_request_error"
    assert re.fullmatch(
        r"prompt is too long: 1600\d\d tokens > 150000 maximum",
        messages.value.body["error"]["message"],
    )
    with pytest.raises(openai.BadRequestError) as responses:
        codex.responses.create(model="qwen3-coder-plus", input=LONG)
    assert responses.value.code == "context_length_exceeded"
    assert fake.chat_requests == []


def test_a_long_prompt_that_fits_is_counted_off_the_hub_and_max_tokens_lowered(
    proxy, claude, fake
):
    prompt = "hello " * 100_000  # ~100k tokens: the byte bound is over the window, so counted
    raw = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-6",
        max_tokens=64000,
        stream=True,
        messages=[{"role": "user", "content": prompt}],
    )
    for _ in raw.parse():
        pass
    sent = fake.chat_requests[-1]["body"]["max_tokens"]
    assert 49_000 < sent < 50_000  # 150,000 less a prompt of a little over 100,000
    assert raw.headers["X-Qwenproxy-Max-Tokens"] == str(sent)
    result = claude.messages.count_tokens(
        model="claude-sonnet-4-6", messages=[{"role": "user", "content": "hello " * 50_000}]
    )
    # "user\n" + 50,000 " hello"-ish tokens + the turn's special tokens: the exact figure
    # is asserted in the unit tests; here, that the count runs in a gevent worker.
    assert 50_000 < result.input_tokens < 50_010


def test_an_upstream_refusal_is_the_same_error_and_the_ledger_says_so(proxy, claude, fake_b):
    codex = openai_client(proxy, timeout=30)
    prompt = [{"role": "user", "content": "x" * 2_000}]
    with pytest.raises(openai.BadRequestError) as chat:
        codex.chat.completions.create(model="dashscope:not-in-the-tables", messages=prompt)
    assert chat.value.code == "context_length_exceeded"
    assert chat.value.body["message"].startswith(
        "This model's maximum context length is 1000 tokens. However, your messages resulted in"
    )
    with pytest.raises(anthropic.BadRequestError) as messages:
        claude.messages.create(
            model="dashscope:not-in-the-tables", max_tokens=100, messages=prompt
        )
    assert re.fullmatch(
        r"prompt is too long: \d+ tokens > 1000 maximum", messages.value.body["error"]["message"]
    )
    assert len(fake_b.chat_requests) == 2
    deadline = time.monotonic() + 10
    rows: list = []
    while time.monotonic() < deadline:
        rows = requests.get(proxy.url + "/usage/recent?limit=5", timeout=5).json()["data"]
        if len([r for r in rows if r.get("error_code") == "context_length_exceeded"]) >= 2:
            break
        time.sleep(0.1)
    codes = [(r["status"], r["error_code"]) for r in rows]
    assert codes.count((400, "context_length_exceeded")) >= 2
