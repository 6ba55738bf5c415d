"""In-chat commands, sessions, several backends and failover, through the Flask app against
two fake upstreams: `fake` (qwen-oauth) and `fake_b` (a DashScope-style API-key backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwenproxy import create_app
from qwenproxy.config import CustomBackend
from tests.fake_upstream import reply_error

LOCAL = "[qwenproxy] "


def user(text):
    return [{"role": "user", "content": text}]


@pytest.fixture
def app(make_config, fake, fake_b):
    return create_app(
        make_config(dashscope_api_keys=("sk-dash-1",), dashscope_base_url=fake_b.api_base)
    )


@pytest.fixture
def client(app):
    return app.test_client()


def chat(client, text_or_messages, session=None, **body):
    messages = user(text_or_messages) if isinstance(text_or_messages, str) else text_or_messages
    headers = {"X-Session-ID": session} if session else {}
    return client.post(
        "/v1/chat/completions",
        json={"model": "qwen3-coder-plus", "messages": messages, **body},
        headers=headers,
    )


def answer(response) -> str:
    assert response.status_code == 200, response.json
    return response.json["choices"][0]["message"]["content"]


def test_command_only_turn_is_answered_locally_with_zero_usage(client, fake, fake_b):
    response = chat(client, "!/set(model=dashscope:qwen3-coder-plus)")
    assert answer(response).startswith(LOCAL + "model set to dashscope:qwen3-coder-plus")
    assert response.json["object"] == "chat.completion"
    assert response.json["usage"] == {"prompt_tokens": 0, "completion_tokens": 0,
                                      "total_tokens": 0}
    assert fake.chat_requests == [] and fake_b.chat_requests == []


def test_set_model_wins_over_the_request_model(client, fake, fake_b):
    chat(client, "!/set(model=dashscope:qwen3-coder-flash)")
    response = chat(client, "hello")
    assert answer(response) == "Hello from fake"
    assert response.headers["X-Qwenproxy-Backend"] == "dashscope"
    assert fake_b.chat_requests[-1]["body"]["model"] == "qwen3-coder-flash"
    assert fake.chat_requests == []


def test_command_only_stream_is_a_normal_sse_stream(client, fake):
    response = chat(client, "!/hello", stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    frames = [f[6:] for f in response.get_data(as_text=True).split("\n\n") if f]
    assert frames[-1] == "[DONE]"
    first = json.loads(frames[0])
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"]["content"].startswith(LOCAL + "qwenproxy ")
    assert json.loads(frames[-2])["usage"]["total_tokens"] == 0
    assert fake.chat_requests == []


def test_commands_are_stripped_and_command_only_turns_dropped_from_history(client, fake_b):
    first = chat(client, "!/set(backend=dashscope)")
    local_answer = answer(first)
    history = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "!/set(backend=dashscope)"},
        {"role": "assistant", "content": local_answer},
        {"role": "user", "content": "what is 2+2? !/hello"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": [{"type": "text", "text": "!/set(loop-detection=false)"},
                                     {"type": "text", "text": "and 3+3?"}]},
    ]
    response = chat(client, history, model="qwen-plus")
    assert answer(response) == "Hello from fake"
    sent = fake_b.chat_requests[-1]["body"]["messages"]
    assert "!/" not in json.dumps(sent)
    assert sent == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": [{"type": "text", "text": "and 3+3?"}]},
    ]


def test_commands_in_earlier_turns_are_not_run(client, fake):
    history = [
        {"role": "user", "content": "!/set(model=dashscope:x) hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "go on"},
    ]
    chat(client, history)
    assert fake.chat_requests[-1]["body"]["model"] == "coder-model"
    assert "model from the request" in answer(chat(client, "!/hello"))


def test_sessions_are_isolated_by_session_id(client, fake, fake_b):
    chat(client, "!/set(model=dashscope:qwen3-coder-plus)", session="alice")
    chat(client, "hi", session="alice")
    chat(client, "hi", session="bob")
    assert len(fake_b.chat_requests) == 1
    assert len(fake.chat_requests) == 1
    assert "session local/bob" in answer(chat(client, "!/hello", session="bob"))


def test_sessions_are_isolated_by_client_key(make_config, fake, fake_b):
    app = create_app(make_config(proxy_api_keys=("key-a", "key-b"),
                                 dashscope_api_keys=("sk-dash-1",),
                                 dashscope_base_url=fake_b.api_base))
    client = app.test_client()

    def as_key(key, text):
        return client.post("/v1/chat/completions", json={"messages": user(text)},
                           headers={"Authorization": f"Bearer {key}"})

    as_key("key-a", "!/set(backend=dashscope)")
    as_key("key-a", "hi")
    as_key("key-b", "hi")
    assert len(fake_b.chat_requests) == 1 and len(fake.chat_requests) == 1
    hello = answer(as_key("key-a", "!/hello"))
    assert "key-a" not in hello


def test_oneoff_applies_to_exactly_the_next_request(client, fake, fake_b):
    assert "next request" in answer(chat(client, "!/oneoff(dashscope:qwen-max)"))
    chat(client, "first")
    chat(client, "second")
    assert [r["body"]["model"] for r in fake_b.chat_requests] == ["qwen-max"]
    assert len(fake.chat_requests) == 1


def test_oneoff_with_text_sends_that_text_now(client, fake, fake_b):
    response = chat(client, "!/oneoff(dashscope:qwen-max) summarise this")
    assert answer(response) == "Hello from fake"
    assert fake_b.chat_requests[-1]["body"]["messages"] == user("summarise this")
    chat(client, "again")
    assert len(fake_b.chat_requests) == 1 and len(fake.chat_requests) == 1


def test_unset_removes_overrides(client, fake, fake_b):
    chat(client, "!/set(model=dashscope:qwen-max, backend=dashscope)")
    chat(client, "!/unset(model, backend)")
    chat(client, "hi")
    assert len(fake.chat_requests) == 1 and fake_b.chat_requests == []


def test_hello_and_help(client):
    hello = answer(chat(client, "!/hello"))
    assert "qwenproxy 0." in hello and "session local" in hello
    assert "loop-detection=on" in hello and "redact-api-keys-in-prompts=on" in hello
    listing = answer(chat(client, "!/help"))
    for name in ("set", "unset", "oneoff", "hello", "create-failover-route", "route-append",
                 "route-prepend", "route-clear", "route-list", "list-failover-routes",
                 "delete-failover-route"):
        assert f"!/{name}" in listing
    assert "policy" in answer(chat(client, "!/help(create-failover-route)")).lower()


def test_toggles_show_in_hello(client):
    chat(client, "!/set(loop-detection=false, redact-api-keys-in-prompts=off)")
    hello = answer(chat(client, "!/HELLO"))
    assert "loop-detection=off" in hello and "redact-api-keys-in-prompts=off" in hello


@pytest.mark.parametrize(
    "command, says",
    [
        ("!/frobnicate", "Unknown command"),
        ("!/set(colour=blue)", "Unknown key"),
        ("!/set(loop-detection=maybe)", "true or false"),
        ("!/set(model=nosuch:model)", "Unknown backend"),
        ("!/set(backend=openrouter)", "not enabled"),
        ("!/oneoff()", "exactly one"),
        ("!/route-append(name=missing, element=dashscope:x)", "No failover route"),
        ("!/create-failover-route(name=r1, policy=zz)", "Unknown policy"),
        # Values that name something meet the same rules as a request's model.
        ("!/set(model=dashscope:a\x00b)", "control character"),
        ("!/set(model=a\rb)", "control character"),
        ("!/set(model=" + "m" * 300 + ")", "at most 256"),
        ("!/oneoff(a\x1bb)", "control character"),
        ("!/set(backend=dash\x7fscope)", "control character"),
    ],
)
def test_bad_commands_say_what_is_wrong_and_change_nothing(client, fake, fake_b, command, says):
    text = answer(chat(client, f"!/set(backend=dashscope) {command}"))
    assert text.startswith(LOCAL) and says in text
    assert "Write it as" in text or "Commands:" in text or "Create it with" in text
    assert fake.chat_requests == [] and fake_b.chat_requests == []
    chat(client, "hi")  # the valid set(backend=...) before the bad command did not apply
    assert len(fake.chat_requests) == 1 and fake_b.chat_requests == []


def test_a_route_element_with_a_control_character_is_refused(client, fake, fake_b):
    chat(client, "!/create-failover-route(name=r2)")
    text = answer(chat(client, "!/route-append(name=r2, element=dashscope:a\nb)"))
    assert "control character" in text and "Write it as" in text
    assert "(empty)" in answer(chat(client, "!/route-list(name=r2)"))


def test_no_command_or_field_chooses_an_upstream_url(client, fake, fake_b):
    text = answer(chat(client, "!/set(model=http://evil.example/v1:gpt)"))
    assert "Unknown backend" in text
    response = client.post("/v1/chat/completions",
                           json={"model": "qwen-plus", "messages": user("hi"),
                                 "base_url": "http://127.0.0.1:1/v1", "api_base": "x"},
                           headers={"X-Forwarded-Host": "evil.example", "X-Original-URL": "http://x"})
    assert answer(response) == "Hello from fake"
    assert len(fake.chat_requests) == 1


def test_failover_route_skips_a_failing_backend(client, fake, fake_b):
    for command in ("!/create-failover-route(name=safe, policy=m)",
                    "!/route-append(name=safe, element=dashscope:qwen3-coder-plus)",
                    "!/route-append(name=safe, element=qwen-oauth:qwen3-coder-plus)"):
        assert "[qwenproxy]" in answer(chat(client, command))
    listing = answer(chat(client, "!/route-list(name=safe)"))
    assert "dashscope:qwen3-coder-plus -> qwen-oauth:qwen3-coder-plus" in listing
    fake_b.script.append(reply_error(500, "internal"))
    response = chat(client, "hi", model="safe")
    assert answer(response) == "Hello from fake"
    assert response.headers["X-Qwenproxy-Backend"] == "qwen-oauth"
    assert len(fake_b.chat_requests) == 1 and len(fake.chat_requests) == 1


def test_failover_route_set_as_session_model_and_prepend_clear_delete(client, fake, fake_b):
    chat(client, "!/create-failover-route(name=r, policy=m)")
    chat(client, "!/route-append(name=r, element=qwen-oauth:qwen-plus)")
    chat(client, "!/route-prepend(name=r, element=dashscope:qwen-max)")
    chat(client, "!/set(model=r)")
    chat(client, "hi")
    assert fake_b.chat_requests[-1]["body"]["model"] == "qwen-max" and fake.chat_requests == []
    assert "routes:" in answer(chat(client, "!/list-failover-routes"))
    chat(client, "!/route-clear(name=r)")
    cleared = chat(client, "hi")
    assert cleared.status_code == 404 and "no usable element" in cleared.json["error"]["message"]
    assert "deleted" in answer(chat(client, "!/delete-failover-route(name=r)"))
    assert "no failover routes" in answer(chat(client, "!/list-failover-routes"))


def test_no_failover_on_a_plain_4xx(client, fake, fake_b):
    chat(client, "!/create-failover-route(name=r, policy=m)")
    chat(client, "!/route-append(name=r, element=dashscope:a)")
    chat(client, "!/route-append(name=r, element=qwen-oauth:b)")
    fake_b.script.append(reply_error(400, "bad parameter"))
    response = chat(client, "hi", model="r")
    assert response.status_code == 400 and "bad parameter" in response.json["error"]["message"]
    assert fake.chat_requests == []


def test_declared_routes_from_config(make_config, fake, fake_b):
    app = create_app(make_config(
        dashscope_api_keys=("sk-dash-1",), dashscope_base_url=fake_b.api_base,
        failover_routes={"main": {"policy": "m",
                                  "elements": ["dashscope:qwen-max", "qwen-oauth:qwen-plus"]}},
    ))
    client = app.test_client()
    fake_b.script.append(reply_error(503, "overloaded"))
    assert chat(client, "hi", model="main").headers["X-Qwenproxy-Backend"] == "qwen-oauth"
    assert "cannot be deleted" in answer(chat(client, "!/delete-failover-route(name=main)"))


def test_insufficient_quota_moves_to_the_next_key_and_pauses_the_first(make_config, fake,
                                                                        fake_b):
    app = create_app(make_config(dashscope_api_keys=("sk-dash-1", "sk-dash-2"),
                                 dashscope_base_url=fake_b.api_base, llm_backend="dashscope"))
    client = app.test_client()
    # Rotation starts at key 1; its 429 insufficient_quota sends the request to key 2.
    fake_b.script.append(reply_error(429, "You exceeded your current quota",
                                     code="insufficient_quota"))
    assert answer(chat(client, "one")) == "Hello from fake"
    keys = [r["headers"]["authorization"] for r in fake_b.chat_requests]
    assert keys == ["Bearer sk-dash-1", "Bearer sk-dash-2"]
    for _ in range(3):  # key 1 is paused: every request now goes to key 2 directly
        chat(client, "more")
    keys = [r["headers"]["authorization"] for r in fake_b.chat_requests[2:]]
    assert keys == ["Bearer sk-dash-2"] * 3


def test_all_keys_out_of_quota_is_a_429_with_retry_after(make_config, fake_b):
    app = create_app(make_config(dashscope_api_keys=("sk-dash-1",),
                                 dashscope_base_url=fake_b.api_base, llm_backend="dashscope"))
    client = app.test_client()
    fake_b.script.append(reply_error(429, "quota", code="insufficient_quota",
                                     headers=[("Retry-After", "120")]))
    response = chat(client, "one")
    assert response.status_code == 429 and response.headers["Retry-After"] == "120"


def test_keys_and_qwen_headers_go_only_to_their_own_backend(client, fake, fake_b):
    chat(client, "hi", model="dashscope:qwen-max")
    chat(client, "hi", model="qwen-oauth:qwen-max")
    to_b = fake_b.chat_requests[0]["headers"]
    to_oauth = fake.chat_requests[0]["headers"]
    assert to_b["authorization"] == "Bearer sk-dash-1"
    assert not any(k.startswith("x-dashscope") for k in to_b)
    assert to_oauth["authorization"] == "Bearer tok-initial"
    assert to_oauth["x-dashscope-authtype"] == "qwen-oauth"


def test_custom_backend_from_environment_style_config(make_config, fake_b):
    app = create_app(make_config(custom_backends=(
        CustomBackend("acme", fake_b.api_base, ("sk-dash-2",), ("acme-large",)),)))
    client = app.test_client()
    response = chat(client, "hi", model="acme:acme-large")
    assert response.headers["X-Qwenproxy-Backend"] == "acme"
    assert fake_b.chat_requests[-1]["headers"]["authorization"] == "Bearer sk-dash-2"
    ids = [m["id"] for m in client.get("/v1/models").json["data"]]
    assert "acme:acme-large" in ids


def test_models_lists_enabled_backends_only(client):
    owners = {m["owned_by"] for m in client.get("/v1/models").json["data"]}
    assert owners == {"qwen-oauth", "dashscope"}


def test_command_prefix_can_be_changed(make_config, fake):
    client = create_app(make_config(command_prefix="##")).test_client()
    assert answer(chat(client, "##hello")).startswith(LOCAL)
    assert answer(chat(client, "!/hello")) == "Hello from fake"
    assert fake.chat_requests[-1]["body"]["messages"] == user("!/hello")


def test_an_unavailable_database_is_a_503_not_a_traceback(app, client, fake):
    db = app.extensions["qwenproxy"].db
    db.engine.dispose()
    path = Path(db.url.removeprefix("sqlite:///"))
    for suffix in ("", "-wal", "-shm"):  # the next connection finds an empty file: no tables
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    response = chat(client, "hi", session="new-session")
    assert response.status_code == 503
    assert response.json["error"]["code"] == "database_unavailable"
    assert "session" in response.json["error"]["message"]
    assert fake.chat_requests == []


def test_several_qwen_code_accounts_rotate_and_quota_pauses_one(make_config, fake, tmp_path):
    from tests.conftest import write_creds

    second = write_creds(tmp_path / "second" / "oauth_creds.json", fake,
                         access_token="tok-second", refresh_token="refresh-second")
    fake.valid_tokens.add("tok-second")
    first = make_config().qwen_oauth_creds[0]
    client = create_app(make_config(qwen_oauth_creds=(first, second))).test_client()
    for _ in range(4):
        assert answer(chat(client, "hi")) == "Hello from fake"
    tokens = [r["headers"]["authorization"] for r in fake.chat_requests]
    assert sorted(tokens) == ["Bearer tok-initial"] * 2 + ["Bearer tok-second"] * 2
    fake.script.append(
        reply_error(429, "Free allocated quota exceeded.", code="insufficient_quota")
    )
    assert answer(chat(client, "hi")) == "Hello from fake"  # the other account answered
    paused = fake.chat_requests[-2]["headers"]["authorization"]
    for _ in range(3):
        chat(client, "hi")
    assert all(r["headers"]["authorization"] != paused for r in fake.chat_requests[-3:])


def test_a_route_created_in_chat_cannot_take_over_a_model_name(make_config, fake, fake_b):
    app = create_app(make_config(proxy_api_keys=("alice-key-1", "bob-key-22"),
                                 dashscope_api_keys=("sk-dash-1",),
                                 dashscope_base_url=fake_b.api_base))
    client = app.test_client()

    def as_key(key, text, model="qwen3-coder-plus"):
        return client.post("/v1/chat/completions", headers={"x-api-key": key},
                           json={"model": model, "messages": user(text)})

    for name in ("qwen3-coder-plus", "coder-model", "qwen-max"):
        text = answer(as_key("alice-key-1", f"!/create-failover-route(name={name})"))
        assert "is a model name" in text
    assert answer(as_key("bob-key-22", "hi")) == "Hello from fake"
    assert fake.chat_requests[-1]["body"]["model"] == "coder-model"


@pytest.mark.parametrize("text", [
    "fix this script:\n#!/bin/bash\necho hi",
    "#!/usr/bin/env python3\nprint(1)",
    "copy it to !/tmp/out and run",
])
def test_text_that_only_looks_like_a_command_reaches_the_model_untouched(client, fake, text):
    assert answer(chat(client, text)) == "Hello from fake"
    assert fake.chat_requests[-1]["body"]["messages"] == user(text)


def test_shebangs_in_earlier_turns_are_kept(client, fake):
    history = [{"role": "user", "content": "#!/bin/sh\nls"},
               {"role": "assistant", "content": "ok"},
               {"role": "user", "content": "and now?"}]
    chat(client, history)
    assert fake.chat_requests[-1]["body"]["messages"][0]["content"] == "#!/bin/sh\nls"


def test_a_command_racing_another_change_to_the_session_keeps_both(make_config, fake, fake_b):
    from qwenproxy.container import build_services
    from qwenproxy.pipeline.sessions import SessionStore

    class RacingSessions(SessionStore):
        """Another request changes the session just before this one saves, once."""

        raced = False

        def save(self, loaded, state):
            if not self.raced:
                self.raced = True
                other = self.load(loaded.id)
                super().save(other, other.state.changed(loop_detection=False))
            return super().save(loaded, state)

    config = make_config(dashscope_api_keys=("sk-dash-1",), dashscope_base_url=fake_b.api_base)
    services = build_services(config)
    services.completions.sessions = RacingSessions(services.db, config.session_ttl)
    client = create_app(config, services).test_client()
    assert "backend set to dashscope" in answer(chat(client, "!/set(backend=dashscope)"))
    hello = answer(chat(client, "!/hello"))
    assert "backend dashscope" in hello and "loop-detection=off" in hello
