"""Loop detection and key redaction as a client sees them, against the fake upstream."""

from __future__ import annotations

import json

import pytest

from qwenproxy import create_app
from tests.fake_upstream import chunk, completion, reply_json, reply_stream

PARAGRAPH = (
    "I will now fix the failing test by updating the assertion in test_parser.py so that "
    "it expects the new error message, and then run the suite again to confirm. "
)

CODE_SAMPLE = "\n".join(
    [f"def handler_{i}(request):\n    return respond(request, status={200 + i % 3})\n"
     for i in range(40)]
    + ["| name | value |", "|------|-------|"]
    + [f"| item{i} | {i * 7} |" for i in range(60)]
    + ["}" for _ in range(8)]
    + [f"{i}. Step number {i}: check the configuration file" for i in range(1, 40)]
)


def stream_of(text: str, piece: int = 17) -> list[dict]:
    pieces = [text[i:i + piece] for i in range(0, len(text), piece)]
    return [chunk({"content": p}) for p in pieces] + [chunk({}, finish="stop")]


def post_stream(client, text="go", session=None):
    headers = {"X-Session-ID": session} if session else {}
    response = client.post("/v1/chat/completions", headers=headers, json={
        "model": "m", "stream": True, "messages": [{"role": "user", "content": text}]})
    frames = [f[6:] for f in response.get_data(as_text=True).split("\n\n") if f.startswith("data")]
    content = "".join(json.loads(f)["choices"][0]["delta"].get("content") or ""
                      for f in frames[:-1] if json.loads(f).get("choices"))
    return response, frames, content


def test_looping_stream_is_cut_with_a_notice_and_done(client, fake):
    fake.script.append(reply_stream(stream_of(PARAGRAPH * 60), delay=0.001))
    response, frames, content = post_stream(client)
    assert frames[-1] == "[DONE]"
    last = json.loads(frames[-2])
    assert last["choices"][0]["finish_reason"] == "stop"
    notice = content.split("[qwenproxy]")[1]
    assert "kept repeating itself" in notice and "I will now fix" in notice
    received = content.split("\n\n[qwenproxy]")[0]
    assert len(received) < 6 * len(PARAGRAPH)  # cut within a couple of repetitions of the 4th
    assert fake.stream_closed.wait(2.0)


@pytest.mark.parametrize("piece", [1, 9, 64])
def test_ordinary_code_and_tables_are_never_cut(client, fake, piece):
    fake.script.append(reply_stream(stream_of(CODE_SAMPLE, piece)))
    _, frames, content = post_stream(client)
    assert content == CODE_SAMPLE and frames[-1] == "[DONE]"


def test_session_toggle_turns_loop_detection_off(client, fake):
    client.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "!/set(loop-detection=false)"}]})
    fake.script.append(reply_stream(stream_of(PARAGRAPH * 8)))
    _, _, content = post_stream(client)
    assert content == PARAGRAPH * 8


def test_config_turns_loop_detection_off(make_config, fake):
    client = create_app(make_config(loop_detection=False)).test_client()
    fake.script.append(reply_stream(stream_of(PARAGRAPH * 8)))
    assert post_stream(client)[2] == PARAGRAPH * 8


def test_non_stream_loop_is_flagged_after_the_fact(client, fake):
    fake.script.append(reply_json(completion(PARAGRAPH * 6)))
    response = client.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "go"}]})
    assert response.headers["X-Qwenproxy-Loop-Detected"] == "true"


KEYS = {
    "openai": "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z" + "Q7",
    "anthropic": "sk-ant-api03-" + "x7Yz2" * 8,
    "aws": "AKIA" + "IOSFODNN7EXAMPLE",
    "github": "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
    "google": "AIza" + "SyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
    "slack": "xoxb-" + "1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
}


@pytest.mark.parametrize("name", sorted(KEYS))
def test_each_key_format_is_redacted_before_forwarding(client, fake, name):
    key = KEYS[name]
    response = client.post("/v1/chat/completions", json={"messages": [
        {"role": "system", "content": f"deploy with {key}"},
        {"role": "user", "content": [{"type": "text", "text": f"my key is {key} ok"}]},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "c1", "type": "function",
            "function": {"name": "run", "arguments": json.dumps({"env": key})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": f"KEY={key}"},
        {"role": "user", "content": "thanks"},
    ]})
    assert response.status_code == 200
    assert response.headers["X-Qwenproxy-Redactions"] == "4"
    sent = json.dumps(fake.chat_requests[-1]["body"])
    assert key not in sent
    assert sent.count("(API_KEY_HAS_BEEN_REDACTED)") == 4


def test_configured_secrets_are_redacted(make_config, fake, fake_b):
    client = create_app(make_config(proxy_api_keys=("client-key-123456",),
                                    dashscope_api_keys=("sk-dash-1",),
                                    dashscope_base_url=fake_b.api_base)).test_client()
    text = "keys: client-key-123456 and tok-initial and refresh-initial here"
    client.post("/v1/chat/completions", headers={"x-api-key": "client-key-123456"},
                json={"model": "qwen-oauth:m", "messages": [{"role": "user", "content": text}]})
    sent = fake.chat_requests[-1]["body"]["messages"][0]["content"]
    assert sent == ("keys: (API_KEY_HAS_BEEN_REDACTED) and (API_KEY_HAS_BEEN_REDACTED) and "
                    "(API_KEY_HAS_BEEN_REDACTED) here")


def test_non_secrets_are_untouched_and_no_header(client, fake):
    text = ("uuid 123e4567-e89b-12d3-a456-426614174000 sha "
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 and sk-learn, "
            "task-list, ask-me")
    response = client.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": text}]})
    assert "X-Qwenproxy-Redactions" not in response.headers
    assert fake.chat_requests[-1]["body"]["messages"][0]["content"] == text


def test_redaction_toggles(client, make_config, fake):
    key = KEYS["github"]
    client.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "!/set(redact-api-keys-in-prompts=false)"}]})
    client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": key}]})
    assert fake.chat_requests[-1]["body"]["messages"][0]["content"] == key
    off = create_app(make_config(redact_api_keys_in_prompts=False)).test_client()
    off.post("/v1/chat/completions", headers={"X-Session-ID": "other"},
             json={"messages": [{"role": "user", "content": key}]})
    assert fake.chat_requests[-1]["body"]["messages"][0]["content"] == key
