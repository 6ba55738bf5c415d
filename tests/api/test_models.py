"""GET /v1/models, /v1/models/<id> and /health."""

from __future__ import annotations

from qwenproxy import create_app


def test_models_lists_qwen_oauth_models_owned_by_the_backend(client, fake):
    response = client.get("/v1/models")
    assert response.status_code == 200
    assert response.json["object"] == "list"
    ids = {entry["id"]: entry for entry in response.json["data"]}
    for name in (
        "qwen3-coder-plus",
        "qwen3-coder-flash",
        "qwen-turbo",
        "qwen-plus",
        "qwen-max",
        "qwen2.5-coder-32b-instruct",
        "qwen2.5-72b-instruct",
    ):
        assert ids[f"qwen-oauth:{name}"]["owned_by"] == "qwen-oauth"
        assert ids[f"qwen-oauth:{name}"]["object"] == "model"
    assert fake.chat_requests == []


def test_model_detail_by_qualified_or_bare_name(client):
    assert client.get("/v1/models/qwen-oauth:qwen3-coder-plus").json["id"] == (
        "qwen-oauth:qwen3-coder-plus"
    )
    assert client.get("/v1/models/qwen3-coder-flash").json["id"] == "qwen-oauth:qwen3-coder-flash"
    missing = client.get("/v1/models/no-such-model")
    assert missing.status_code == 404
    assert missing.json["error"]["code"] == "model_not_found"


def test_health_needs_no_key_and_no_upstream(make_config, fake):
    client = create_app(make_config(proxy_api_keys=("k1",))).test_client()
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}
    assert fake.chat_requests == [] and fake.token_requests == []


def test_models_carry_context_length_and_max_output_tokens(client):
    ids = {entry["id"]: entry for entry in client.get("/v1/models").json["data"]}
    coder = ids["qwen-oauth:coder-model"]
    assert (coder["context_length"], coder["max_output_tokens"]) == (1_000_000, 65_536)
    # an alias inherits its target's facts
    alias = ids["qwen-oauth:qwen3-coder-plus"]
    assert (alias["context_length"], alias["max_output_tokens"]) == (1_000_000, 65_536)
    detail = client.get("/v1/models/qwen-oauth:qwen-max").json
    assert (detail["context_length"], detail["max_output_tokens"]) == (32_768, 8_192)


def test_model_info_overrides_and_extends_the_facts(make_config):
    info = {
        "qwen-oauth": {"coder-model": {"context_length": 500_000}},
        "my-vllm": {"Qwen/Qwen3-Coder-30B-A3B-Instruct": {"context_length": 65_536}},
    }
    from qwenproxy.config import CustomBackend

    backend = CustomBackend(
        "my-vllm", "http://127.0.0.1:9/v1", (), ("Qwen/Qwen3-Coder-30B-A3B-Instruct",)
    )
    client = create_app(make_config(model_info=info, custom_backends=(backend,))).test_client()
    ids = {entry["id"]: entry for entry in client.get("/v1/models").json["data"]}
    assert ids["qwen-oauth:qwen3-coder-flash"]["context_length"] == 500_000
    assert ids["qwen-oauth:qwen3-coder-flash"]["max_output_tokens"] == 65_536
    vllm = ids["my-vllm:Qwen/Qwen3-Coder-30B-A3B-Instruct"]
    assert (vllm["context_length"], vllm["max_output_tokens"]) == (65_536, None)
    assert ids["qwen-oauth:qwen2.5-7b-instruct"]["context_length"] == 131_072
