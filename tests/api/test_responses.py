"""POST /v1/responses through the Flask app, driven by the official `openai` SDK (over a
WSGI transport) and by raw requests, against the fake upstream."""

from __future__ import annotations

import json

import httpx2
import openai
import pytest

from qwenproxy import create_app
from tests.api.test_anthropic import recording_app
from tests.fake_upstream import (
    USAGE_CHUNK,
    chunk,
    completion,
    reply_error,
    reply_json,
    reply_stream,
)

MODEL = "gpt-5-codex"
SHELL_TOOL = {
    "type": "function",
    "name": "shell",
    "description": "Runs a shell command",
    "strict": False,
    "parameters": {
        "type": "object",
        "properties": {"command": {"type": "array", "items": {"type": "string"}}},
        "required": ["command"],
    },
}


@pytest.fixture
def make_sdk(make_config):
    clients: list[httpx2.Client] = []

    def make(key: str = "anything", **config) -> openai.OpenAI:
        app = create_app(make_config(**config))
        http = httpx2.Client(transport=httpx2.WSGITransport(app=app), base_url="http://localhost")
        clients.append(http)
        return openai.OpenAI(
            base_url="http://localhost/v1", api_key=key, http_client=http, max_retries=0
        )

    yield make
    for http in clients:
        http.close()


@pytest.fixture
def sdk(make_sdk) -> openai.OpenAI:
    return make_sdk()


def shell_call_stream(pieces: list[str]):
    first = {
        "index": 0,
        "id": "call_s1",
        "type": "function",
        "function": {"name": "shell", "arguments": pieces[0]},
    }
    events = [chunk({"role": "assistant", "content": None}), chunk({"tool_calls": [first]})]
    events += [
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        for piece in pieces[1:]
    ]
    return reply_stream([*events, chunk({}, finish="tool_calls"), USAGE_CHUNK])


def shell_call_json(arguments: str):
    return reply_json(
        completion(
            None,
            tool_calls=[
                {
                    "id": "call_s1",
                    "type": "function",
                    "function": {"name": "shell", "arguments": arguments},
                }
            ],
        )
    )


# --- text -----------------------------------------------------------------------------


def test_text_answer_through_the_sdk(sdk, fake):
    response = sdk.responses.create(model=MODEL, input="Say hello", instructions="Be terse.")
    assert response.output_text == "Hello from fake"
    assert response.status == "completed"
    assert response.model == MODEL
    assert response.id.startswith("resp_")
    assert response.usage.input_tokens == 7
    assert response.usage.output_tokens == 3
    assert response.usage.total_tokens == 10
    sent = fake.chat_requests[-1]["body"]
    assert sent["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Say hello"},
    ]
    assert sent["model"] == "coder-model"


def test_multi_turn_items(sdk, fake):
    sdk.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
            {"role": "user", "content": [{"type": "input_text", "text": "What is my name?"}]},
        ],
    )
    assert fake.chat_requests[-1]["body"]["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "What is my name?"},
    ]


def test_streamed_text_assembles_in_the_sdk(sdk, fake):
    with sdk.responses.stream(model=MODEL, input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == "Hello from fake"
    assert final.output_text == "Hello from fake"
    assert final.status == "completed"
    assert final.usage.total_tokens == 10


def test_raw_stream_events_have_sequence_numbers(make_config, fake):
    client = create_app(make_config()).test_client()
    response = client.post("/v1/responses", json={"model": MODEL, "input": "hi", "stream": True})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    payloads = [
        json.loads(line[len("data: ") :])
        for line in response.get_data(as_text=True).splitlines()
        if line.startswith("data: ")
    ]
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert payloads[0]["type"] == "response.created"
    assert payloads[-1]["type"] == "response.completed"


def test_codex_shaped_request_works(make_config, fake):
    client = create_app(make_config()).test_client()
    body = {
        "model": MODEL,
        "instructions": None,
        "input": [
            {
                "type": "message",
                "id": "msg_a",
                "role": "developer",
                "content": [{"type": "input_text", "text": "You are Codex, a coding agent."}],
            },
            {
                "type": "message",
                "id": "msg_b",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "<environment_context>cwd</environment_context>"}
                ],
            },
            {
                "type": "message",
                "id": "msg_c",
                "role": "user",
                "content": [{"type": "input_text", "text": "list the files"}],
            },
        ],
        "tools": [
            SHELL_TOOL,
            {
                "type": "namespace",
                "name": "mcp__docs__",
                "description": "Docs server",
                "tools": [
                    {
                        "type": "function",
                        "name": "search",
                        "strict": False,
                        "parameters": {"type": "object", "properties": {}},
                    }
                ],
            },
            {"type": "web_search", "external_web_access": False},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "019a-session",
        "client_metadata": {"originator": "codex_cli_rs"},
    }
    response = client.post("/v1/responses", json=body)
    assert response.status_code == 200
    assert "response.completed" in response.get_data(as_text=True)
    sent = fake.chat_requests[-1]["body"]
    assert sent["messages"][0] == {"role": "system", "content": "You are Codex, a coding agent."}
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "user"]
    assert [t["function"]["name"] for t in sent["tools"]] == ["shell", "mcp__docs__search"]
    assert sent["parallel_tool_calls"] is False
    for dropped in ("reasoning", "include", "store", "prompt_cache_key", "client_metadata"):
        assert dropped not in sent


# --- tools ----------------------------------------------------------------------------


def round_trip_input(call) -> list[dict]:
    return [
        {"role": "user", "content": "list files"},
        {
            "type": "function_call",
            "id": call.id,
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": "a.txt\nb.txt"},
    ]


def assert_upstream_saw_the_round_trip(fake) -> None:
    messages = fake.chat_requests[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    call = messages[1]["tool_calls"][0]
    assert call["id"] == "call_s1" and call["function"]["name"] == "shell"
    assert json.loads(call["function"]["arguments"]) == {"command": ["ls"]}
    assert messages[2] == {"role": "tool", "tool_call_id": "call_s1", "content": "a.txt\nb.txt"}


def test_function_call_round_trip(sdk, fake):
    fake.script.append(shell_call_json('{"command": ["ls"]}'))
    response = sdk.responses.create(model=MODEL, input="list files", tools=[SHELL_TOOL])
    [call] = response.output
    assert call.type == "function_call" and call.name == "shell" and call.call_id == "call_s1"
    assert json.loads(call.arguments) == {"command": ["ls"]}

    answer = sdk.responses.create(model=MODEL, input=round_trip_input(call), tools=[SHELL_TOOL])
    assert answer.output_text == "Hello from fake"
    assert_upstream_saw_the_round_trip(fake)


@pytest.mark.parametrize(
    "pieces",
    [['{"command": ["ls"]}'], ["", '{"comm', 'and": ', '["l', 's"]}']],
    ids=["whole", "split-oddly"],
)
def test_streamed_function_call_round_trip(sdk, fake, pieces):
    fake.script.append(shell_call_stream(pieces))
    with sdk.responses.stream(model=MODEL, input="list files", tools=[SHELL_TOOL]) as stream:
        final = stream.get_final_response()
    [call] = final.output
    assert call.type == "function_call" and call.call_id == "call_s1"
    assert json.loads(call.arguments) == {"command": ["ls"]}

    with sdk.responses.stream(
        model=MODEL, input=round_trip_input(call), tools=[SHELL_TOOL]
    ) as stream:
        assert stream.get_final_response().output_text == "Hello from fake"
    assert_upstream_saw_the_round_trip(fake)


def test_namespaced_tool_calls_come_back_with_their_namespace(sdk, fake):
    fake.script.append(
        reply_json(
            completion(
                None,
                tool_calls=[
                    {
                        "id": "call_n",
                        "type": "function",
                        "function": {"name": "mcp__docs__search", "arguments": '{"q": "x"}'},
                    }
                ],
            )
        )
    )
    tools = [
        {
            "type": "namespace",
            "name": "mcp__docs__",
            "description": "Docs",
            "tools": [{"type": "function", "name": "search", "parameters": {"type": "object"}}],
        }
    ]
    response = sdk.responses.create(model=MODEL, input="find x", tools=tools)
    [call] = response.output
    assert call.name == "search" and call.namespace == "mcp__docs__"


# --- models, commands, errors -----------------------------------------------------------


def test_vendor_model_is_mapped_through_anthropic_model_map(make_sdk, fake, fake_b):
    sdk = make_sdk(
        dashscope_api_keys=("sk-dash-1",),
        dashscope_base_url=fake_b.api_base,
        anthropic_model_map={"*": "dashscope:qwen3-coder-plus"},
    )
    response = sdk.responses.create(model=MODEL, input="hi")
    assert response.model == MODEL
    assert fake_b.chat_requests[-1]["body"]["model"] == "qwen3-coder-plus"
    assert fake.chat_requests == []


def test_in_chat_command_is_answered_locally(sdk, fake):
    response = sdk.responses.create(model=MODEL, input="!/hello")
    assert response.output_text.startswith("[qwenproxy]")
    assert fake.chat_requests == []


def test_previous_response_id_is_a_clear_400(sdk, fake):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model=MODEL, input="hi", previous_response_id="resp_123")
    error = caught.value.body
    assert error["param"] == "previous_response_id"
    assert "not supported" in error["message"]
    assert fake.chat_requests == []


def test_bad_body_is_an_openai_shaped_400(make_config, fake):
    client = create_app(make_config()).test_client()
    response = client.post("/v1/responses", json={"model": MODEL})
    assert response.status_code == 400
    assert response.json["error"]["param"] == "input"
    assert response.json["error"]["type"] == "invalid_request_error"


def test_bad_key_is_a_401(make_sdk, fake):
    sdk = make_sdk(key="wrong", proxy_api_keys=("right",))
    with pytest.raises(openai.AuthenticationError):
        sdk.responses.create(model=MODEL, input="hi")


def test_upstream_error_before_the_stream_keeps_its_status(sdk, fake):
    fake.script.append(reply_error(429, "slow down"))
    with pytest.raises(openai.RateLimitError):
        sdk.responses.create(model=MODEL, input="hi", stream=True)


def test_error_mid_stream_is_response_failed(sdk, fake):
    fake.script.append(reply_stream([chunk({"content": "partial"})], done=False))
    events = list(sdk.responses.create(model=MODEL, input="hi", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert "closed the stream" in events[-1].response.error.message


def test_a_finished_stream_is_recorded_as_a_success(make_config, fake):
    app, finished = recording_app(make_config)
    body = {"model": MODEL, "input": "hi", "stream": True}
    app.test_client().post("/v1/responses", json=body).get_data()
    [ctx] = finished
    assert ctx.status == 200 and ctx.error_code is None


REASONING_STREAM = [
    chunk({"role": "assistant", "reasoning_content": "List the steps, "}),
    chunk({"reasoning_content": "then answer."}),
    chunk({"content": "Done"}, finish="stop"),
    USAGE_CHUNK,
]


def test_streamed_reasoning_is_a_reasoning_item_before_the_message(sdk, fake):
    fake.script.append(reply_stream(REASONING_STREAM))
    with sdk.responses.stream(model=MODEL, input="plan it") as stream:
        deltas = [e.delta for e in stream if e.type == "response.reasoning_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["List the steps, ", "then answer."]
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].content[0].text == "List the steps, then answer."
    assert final.output_text == "Done"


def test_reasoning_of_a_whole_answer_is_a_reasoning_item(sdk, fake):
    answer = completion("Done")
    answer["choices"][0]["message"]["reasoning"] = "Short plan."  # OpenRouter's field
    fake.script.append(reply_json(answer))
    response = sdk.responses.create(model=MODEL, input="plan it")
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "Short plan."
    assert response.output_text == "Done"


# --- the context guard --------------------------------------------------------------------


def test_a_prompt_over_the_window_is_a_400_context_length_exceeded(make_sdk, fake):
    sdk = make_sdk(model_info={"qwen-oauth": {"coder-model": {"context_length": 3000}}})
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="qwen3-coder-plus", input="hello " * 4000)
    assert caught.value.status_code == 400
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.body["message"].startswith(
        "This model's maximum context length is 3000 tokens."
    )
    assert fake.chat_requests == []


def test_an_upstream_length_refusal_is_a_400_context_length_exceeded(make_sdk, fake):
    fake.context_window, fake.length_wording = 200, "vllm"
    sdk = make_sdk(context_guard=False)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.responses.create(model="qwen3-coder-plus", input="x" * 500, stream=True)
    assert caught.value.code == "context_length_exceeded"
    assert len(fake.chat_requests) == 1
