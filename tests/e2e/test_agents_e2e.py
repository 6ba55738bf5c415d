"""End to end for coding agents: the real app under gunicorn/gevent, driven by the official
`anthropic` SDK (/v1/messages, as Claude Code) and `openai` SDK (/v1/responses, as Codex)."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
import requests

from tests.fake_upstream import USAGE_CHUNK, chunk, reply_stream

pytestmark = pytest.mark.e2e

EDIT_TOOL = {
    "name": "Edit",
    "description": "Edit a file",
    "input_schema": {
        "type": "object",
        "properties": {"path": {"type": "string"}, "text": {"type": "string"}},
    },
}


@pytest.fixture
def proxy(start_proxy, fake, fake_b):
    return start_proxy(
        DASHSCOPE_API_KEY="sk-dash-1",
        DASHSCOPE_BASE_URL=fake_b.api_base,
        ANTHROPIC_MODEL_MAP='{"claude-*": "dashscope:qwen3-coder-plus"}',
    )


@pytest.fixture
def sdks():
    """Makes SDK clients for a proxy; closes them (and their pooled sockets) afterwards."""
    made: list = []

    class Make:
        def claude(self, proxy) -> anthropic.Anthropic:
            made.append(
                anthropic.Anthropic(base_url=proxy.url, api_key="x", max_retries=0, timeout=20)
            )
            return made[-1]

        def codex(self, proxy) -> openai.OpenAI:
            made.append(
                openai.OpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0, timeout=20)
            )
            return made[-1]

    yield Make()
    for client in made:
        client.close()


def edit_call_events() -> list:
    arguments = json.dumps({"path": "a.py", "text": "print('hi')\n"})
    pieces = [arguments[:3], arguments[3:11], arguments[11:12], arguments[12:]]
    first = {"index": 0, "id": "call_e1", "type": "function", "function": {"name": "Edit"}}
    events = [chunk({"role": "assistant", "content": "Editing."}), chunk({"tool_calls": [first]})]
    events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces]
    return [*events, chunk({}, finish="tool_calls"), USAGE_CHUNK]


def test_claude_model_maps_to_the_configured_backend_and_streams(proxy, sdks, fake, fake_b):
    with sdks.claude(proxy).messages.stream(
        model="claude-sonnet-4-6",
        max_tokens=32000,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "hi"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from fake"
    assert final.model == "claude-sonnet-4-6"
    assert final.usage.output_tokens == 3
    assert fake.chat_requests == []
    sent = fake_b.chat_requests[-1]["body"]
    assert sent["model"] == "qwen3-coder-plus"
    assert sent["messages"][0] == {  # dashscope takes cache markers: the block's is kept
        "role": "system",
        "content": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
    }


def test_claude_code_streamed_tool_use_round_trip(proxy, sdks, fake_b):
    fake_b.script.append(reply_stream(edit_call_events()))
    client = sdks.claude(proxy)
    question = [{"role": "user", "content": "write a.py"}]
    with client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=1000, tools=[EDIT_TOOL], messages=question
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    text, tool_use = final.content
    assert text.text == "Editing."
    assert tool_use.input == {"path": "a.py", "text": "print('hi')\n"}

    history = [
        *question,
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "ok"}],
        },
    ]
    answer = client.messages.create(
        model="claude-sonnet-4-6", max_tokens=1000, tools=[EDIT_TOOL], messages=history
    )
    assert answer.content[0].text == "Hello from fake"
    sent = fake_b.chat_requests[-1]["body"]["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_e1", "content": "ok"}
    assert sent[-2]["tool_calls"][0]["id"] == "call_e1"


def test_anthropic_errors_and_probe_under_gunicorn(start_proxy, sdks, fake):
    proxy = start_proxy(PROXY_API_KEY="right")
    assert requests.head(proxy.url + "/api/hello", timeout=5).status_code == 200
    with pytest.raises(anthropic.AuthenticationError) as caught:
        sdks.claude(proxy).messages.create(
            model="claude-sonnet-4-6", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    assert caught.value.body["error"]["type"] == "authentication_error"


def test_codex_responses_stream_with_tools(proxy, sdks, fake, fake_b):
    shell = {
        "type": "function",
        "name": "shell",
        "strict": False,
        "parameters": {"type": "object", "properties": {"command": {"type": "array"}}},
    }
    fake.script.append(
        reply_stream(
            [
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_1",
                                "function": {"name": "shell", "arguments": '{"command": ["ls"]}'},
                            }
                        ]
                    }
                ),
                chunk({}, finish="tool_calls"),
                USAGE_CHUNK,
            ]
        )
    )
    client = sdks.codex(proxy)
    # gpt-* is not in this map: it goes to the default model (qwen-oauth here)
    with client.responses.stream(
        model="gpt-5-codex",
        input=[
            {
                "type": "message",
                "id": "m1",
                "role": "developer",
                "content": [{"type": "input_text", "text": "You are Codex."}],
            },
            {
                "type": "message",
                "id": "m2",
                "role": "user",
                "content": [{"type": "input_text", "text": "ls"}],
            },
        ],
        tools=[shell, {"type": "web_search"}],
        store=False,
    ) as stream:
        final = stream.get_final_response()
    [call] = final.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"command": ["ls"]}
    assert final.usage.total_tokens == 10
    sent = fake.chat_requests[-1]["body"]
    assert sent["messages"][0] == {"role": "system", "content": "You are Codex."}
    assert fake_b.chat_requests == []

    with client.responses.stream(
        model="gpt-5-codex",
        input=[
            {"role": "user", "content": "ls"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": "shell",
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "a.py"},
        ],
        tools=[shell],
    ) as stream:
        assert stream.get_final_response().output_text == "Hello from fake"
    assert fake.chat_requests[-1]["body"]["messages"][-1] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "a.py",
    }


def test_previous_response_id_is_400_under_gunicorn(proxy, sdks):
    with pytest.raises(openai.BadRequestError):
        sdks.codex(proxy).responses.create(model="gpt-5", input="hi", previous_response_id="resp_1")
