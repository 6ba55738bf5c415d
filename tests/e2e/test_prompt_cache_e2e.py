"""Prompt caching end to end: a Claude Code-shaped request with cache_control markers,
sent by the official `anthropic` SDK through the real app under gunicorn/gevent, reaches a
backend that takes markers with the markers in place and one that refuses unknown part
fields without them; cache reads and writes come back in the SDK's usage and land in the
ledger with the request's cost."""

from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest
import requests

from tests.fake_upstream import chunk, completion, reply_json, reply_stream

pytestmark = pytest.mark.e2e

MARKER = {"type": "ephemeral"}
# What Model Studio reports for a prompt partly read from and partly written to an explicit
# cache (field names from its context-cache page): 3,000 prompt tokens, 2,048 of them read
# from the cache, 900 written to it, so 52 neither.
CACHE_USAGE = {
    "prompt_tokens": 3000,
    "completion_tokens": 10,
    "total_tokens": 3010,
    "prompt_tokens_details": {
        "cached_tokens": 2048,
        "cache_creation_input_tokens": 900,
        "cache_creation": {"ephemeral_5m_input_tokens": 900},
        "cache_type": "ephemeral",
    },
}
# Its cost on dashscope (intl) qwen3-coder-plus, first tier: $1 in, $5 out, explicit hits
# $0.10, writes $1.25 per million:
# 52 x 1 + 2,048 x 0.1 + 900 x 1.25 + 10 x 5 = 52 + 204.8 + 1,125 + 50 = 1,431.8 -> $0.0014318
CACHE_USAGE_COST = 0.0014318


def claude_code_request(model: str) -> dict:
    """The shape of Claude Code's requests: marked system blocks (prompt and environment),
    tools with the last one marked, and the latest user turn (a tool result) marked."""
    return {
        "model": model,
        "max_tokens": 32000,
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": MARKER},
            {"type": "text", "text": "<env>cwd: /repo</env>", "cache_control": MARKER},
        ],
        "tools": [
            {"name": "Read", "description": "Read a file", "input_schema": {"type": "object"}},
            {
                "name": "Edit",
                "description": "Edit a file",
                "input_schema": {"type": "object"},
                "cache_control": MARKER,
            },
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "show a.py"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"p": "a.py"}}
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": "print(1)",
                        "cache_control": MARKER,
                    }
                ],
            },
        ],
    }


@pytest.fixture
def proxy(start_proxy, fake, fake_b, tmp_path):
    # dashscope (markers on by default) at fake_b; "strict", an OpenAI-compatible backend
    # of one's own (markers off by default), at a fake that refuses unknown part fields.
    fake.refuse_unknown_fields = True
    return start_proxy(
        DASHSCOPE_API_KEY="sk-dash-1",
        DASHSCOPE_BASE_URL=fake_b.api_base,
        BACKEND_STRICT_BASE_URL=fake.api_base,
        BACKEND_STRICT_API_KEY="tok-initial",
        ANTHROPIC_MODEL_MAP="dashscope:qwen3-coder-plus",
        QWENPROXY_DATA_DIR=str(tmp_path / "data"),
    )


@pytest.fixture
def claude(proxy):
    client = anthropic.Anthropic(base_url=proxy.url, api_key="x", max_retries=0, timeout=20)
    yield client
    client.close()


def marked_parts(body: dict) -> list:
    found = [t for t in body.get("tools", []) if "cache_control" in t]
    for message in body["messages"]:
        if isinstance(message.get("content"), list):
            found += [p for p in message["content"] if "cache_control" in p]
    return found


def assert_markers_in_place(sent: dict) -> None:
    system, user, assistant, tool = sent["messages"]
    assert system == {
        "role": "system",
        "content": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": MARKER},
            {"type": "text", "text": "<env>cwd: /repo</env>", "cache_control": MARKER},
        ],
    }
    assert user == {"role": "user", "content": "show a.py"}
    assert assistant["tool_calls"][0]["id"] == "toolu_1"
    assert tool == {
        "role": "tool",
        "tool_call_id": "toolu_1",
        "content": [{"type": "text", "text": "print(1)", "cache_control": MARKER}],
    }
    assert "cache_control" not in sent["tools"][0]
    assert sent["tools"][1]["cache_control"] == MARKER
    assert len(marked_parts(sent)) == 4


def test_markers_reach_a_backend_that_takes_them_and_cache_usage_comes_back(
    claude, fake_b, proxy
):
    fake_b.script.append(reply_json(completion("Done.", usage=CACHE_USAGE)))
    message = claude.messages.create(**claude_code_request("claude-sonnet-4-6"))
    assert message.content[0].text == "Done."
    assert_markers_in_place(fake_b.chat_requests[-1]["body"])
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (52, 10)
    assert usage.cache_read_input_tokens == 2048
    assert usage.cache_creation_input_tokens == 900

    row = ledger_row(proxy, lambda r: r["backend"] == "dashscope")
    assert (row["cached_tokens"], row["cache_write_tokens"]) == (2048, 900)
    assert row["cost"] == pytest.approx(CACHE_USAGE_COST) and row["currency"] == "USD"


def test_a_streamed_answer_reports_cache_usage_in_the_final_message(claude, fake_b):
    events = [
        chunk({"role": "assistant", "content": "Done."}),
        chunk({}, finish="stop"),
        {**chunk({}), "choices": [], "usage": CACHE_USAGE},
    ]
    fake_b.script.append(reply_stream(events))
    with claude.messages.stream(**claude_code_request("claude-sonnet-4-6")) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == "Done."
    assert_markers_in_place(fake_b.chat_requests[-1]["body"])
    assert final.usage.cache_read_input_tokens == 2048
    assert final.usage.cache_creation_input_tokens == 900
    assert final.usage.input_tokens == 52


def test_a_backend_without_the_switch_gets_no_markers(claude, fake):
    # Claude Code may name the proxy's own models (ANTHROPIC_MODEL=strict:...).
    message = claude.messages.create(**claude_code_request("strict:qwen3-coder-plus"))
    assert message.content[0].text == "Hello from fake"  # the strict fake accepted it
    sent = fake.chat_requests[-1]["body"]
    assert "cache_control" not in json.dumps(sent)
    assert sent["messages"][0] == {
        "role": "system",
        "content": "You are Claude Code.\n\n<env>cwd: /repo</env>",
    }
    assert sent["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "toolu_1",
        "content": "print(1)",
    }


def test_the_strict_fake_does_refuse_markers(start_proxy, fake, sdks_closed):
    # The check above means something: with the switch turned on for it, the same request
    # is refused by that upstream (its 400 reaches the client in Anthropic's shape).
    fake.refuse_unknown_fields = True
    proxy = start_proxy(
        BACKEND_STRICT_BASE_URL=fake.api_base,
        BACKEND_STRICT_API_KEY="tok-initial",
        CACHE_MARKERS='{"strict": true}',
    )
    client = sdks_closed(
        anthropic.Anthropic(base_url=proxy.url, api_key="x", max_retries=0, timeout=20)
    )
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(**claude_code_request("strict:qwen3-coder-plus"))
    assert "cache_control" in str(caught.value)


def test_responses_clients_see_cached_tokens(proxy, fake_b, sdks_closed):
    fake_b.script.append(reply_json(completion("ok", usage=CACHE_USAGE)))
    codex = sdks_closed(
        openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0, timeout=20)
    )
    response = codex.responses.create(model="dashscope:qwen3-coder-plus", input="hi")
    assert response.usage.input_tokens == 3000
    assert response.usage.input_tokens_details.cached_tokens == 2048


@pytest.fixture
def sdks_closed():
    made: list = []

    def keep(client):
        made.append(client)
        return client

    yield keep
    for client in made:
        client.close()


def ledger_row(proxy, predicate, timeout: float = 10.0) -> dict:
    """The newest /usage/recent row that `predicate` accepts (rows are written by a
    background writer, so poll with a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        body = requests.get(proxy.url + "/usage/recent?limit=20", timeout=5).json()
        rows = body.get("data", body) if isinstance(body, dict) else body
        matching = [r for r in rows if predicate(r)]
        if matching or time.monotonic() > deadline:
            assert matching, rows
            return matching[0]
        time.sleep(0.1)
