"""Who may call the API: proxy keys, or loopback clients when no key is set."""

from __future__ import annotations

import pytest

from qwenproxy import create_app

BODY = {"model": "qwen3-coder-plus", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def keyed(make_config):
    return create_app(make_config(proxy_api_keys=("key-one", "key-two"))).test_client()


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer key-one"},
        {"Authorization": "bearer key-two"},
        {"x-api-key": "key-one"},
    ],
)
def test_configured_keys_are_accepted(keyed, headers):
    assert keyed.post("/v1/chat/completions", json=BODY, headers=headers).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic a2V5LW9uZQ=="},
        {"x-api-key": "key-on"},
    ],
)
def test_missing_or_wrong_key_is_401_invalid_api_key(keyed, fake, headers):
    response = keyed.post("/v1/chat/completions", json=BODY, headers=headers)
    assert response.status_code == 401
    assert response.json["error"]["code"] == "invalid_api_key"
    assert "wrong" not in response.json["error"]["message"]
    assert fake.chat_requests == []


def test_models_need_the_key_too(keyed):
    assert keyed.get("/v1/models").status_code == 401
    assert keyed.get("/v1/models", headers={"x-api-key": "key-two"}).status_code == 200


def test_without_keys_non_loopback_clients_get_403_saying_how_to_set_a_key(client, fake):
    response = client.post(
        "/v1/chat/completions", json=BODY, environ_base={"REMOTE_ADDR": "192.0.2.10"}
    )
    assert response.status_code == 403
    assert "PROXY_API_KEY" in response.json["error"]["message"]
    assert fake.chat_requests == []


def test_forwarded_for_is_ignored_unless_trusted(make_config):
    spoof = {"X-Forwarded-For": "127.0.0.1"}
    untrusting = create_app(make_config()).test_client()
    response = untrusting.post(
        "/v1/chat/completions", json=BODY, headers=spoof, environ_base={"REMOTE_ADDR": "192.0.2.10"}
    )
    assert response.status_code == 403
    trusting = create_app(make_config(trust_proxy_headers=True)).test_client()
    response = trusting.post(
        "/v1/chat/completions", json=BODY, headers={"X-Forwarded-For": "192.0.2.10"}
    )
    assert response.status_code == 403
