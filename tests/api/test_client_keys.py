"""Named client keys at the API: they authenticate, carry their record into the request
context, and a key with model globs gets 403 model_not_allowed (OpenAI- or
Anthropic-shaped) for a model outside them — the model the request would really use, after
in-chat commands — before any upstream call, with a ledger row. Keys never reach the log."""

from __future__ import annotations

import logging

import pytest

from qwenproxy import create_app

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture
def app(make_config, fake_b):
    return create_app(
        make_config(
            proxy_api_keys=("sk-admin",),
            dashscope_api_keys=("sk-dash-1",),
            dashscope_base_url=fake_b.api_base,
        )
    )


@pytest.fixture
def coder_key(app):
    services = app.extensions["qwenproxy"]
    record, key = services.client_keys.add("coder", models=("qwen3-coder*", "coder-model"))
    return record, {"Authorization": f"Bearer {key}"}, key


def chat(client, headers, model="qwen3-coder-plus", messages=USER, session=None):
    extra = {"X-Session-ID": session} if session else {}
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": messages},
        headers={**headers, **extra},
    )


def rows(app):
    ledger = app.extensions["qwenproxy"].ledger
    ledger.flush()
    return ledger.recent(20)


def test_a_named_key_is_served_and_recorded_under_its_id(app, coder_key, fake):
    record, headers, _ = coder_key
    response = chat(app.test_client(), headers)
    assert response.status_code == 200
    assert rows(app)[0]["client_key_id"] == record.key_id


def test_a_model_outside_the_globs_is_403_before_any_upstream_call(app, coder_key, fake):
    record, headers, _ = coder_key
    response = chat(app.test_client(), headers, model="qwen-max")
    assert response.status_code == 403
    error = response.json["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "permission_error",
        "model_not_allowed",
        "model",
    )
    assert "qwen-max" in error["message"] and "qwen3-coder*" in error["message"]
    assert fake.chat_requests == []
    [row] = rows(app)
    assert (row["status"], row["error_code"], row["client_key_id"]) == (
        403,
        "model_not_allowed",
        record.key_id,
    )


def test_a_model_set_by_command_is_checked_too(app, coder_key, fake):
    _, headers, _ = coder_key
    client = app.test_client()
    set_model = [{"role": "user", "content": "!/set(model=qwen-max)"}]
    assert chat(client, headers, messages=set_model, session="s1").status_code == 200
    response = chat(client, headers, session="s1")  # asks for coder, the session says max
    assert (response.status_code, response.json["error"]["code"]) == (403, "model_not_allowed")
    assert fake.chat_requests == []


def test_the_anthropic_door_answers_in_its_own_shape(app, coder_key, fake):
    _, _, key = coder_key
    response = app.test_client().post(
        "/v1/messages",
        json={"model": "qwen-max", "max_tokens": 10, "messages": USER},
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
    )
    assert response.status_code == 403
    assert response.json["type"] == "error"
    assert response.json["error"]["type"] == "permission_error"
    assert "qwen-max" in response.json["error"]["message"]
    assert fake.chat_requests == []


def test_admin_keys_have_no_model_limits(app, coder_key, fake):
    response = chat(app.test_client(), {"x-api-key": "sk-admin"}, model="qwen-max")
    assert response.status_code == 200


def test_a_revoked_key_is_refused(app, coder_key):
    _, headers, _ = coder_key
    app.extensions["qwenproxy"].client_keys.revoke("coder")
    response = chat(app.test_client(), headers)
    assert (response.status_code, response.json["error"]["code"]) == (401, "invalid_api_key")


def test_keys_never_reach_the_log(app, coder_key, caplog):
    _, headers, key = coder_key
    client = app.test_client()
    with caplog.at_level(logging.DEBUG):
        chat(client, headers)
        chat(client, headers, model="qwen-max")
        chat(client, {"Authorization": "Bearer qp-wrong-guess-0000000000000000000"})
    assert key not in caplog.text and key[3:] not in caplog.text
