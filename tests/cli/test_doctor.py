"""Upstreams as users hold them today: presets, aliases, `doctor`, the ended OAuth tier."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qwenproxy import create_app
from qwenproxy.config import Config, ConfigError
from tests.conftest import ROOT, free_port, write_creds

USER = [{"role": "user", "content": "hi"}]


def chat(client, model, **headers):
    return client.post("/v1/chat/completions", json={"model": model, "messages": USER},
                       headers=headers)


@pytest.mark.parametrize(
    "preset, key_field, base_field, model, upstream_model",
    [
        ("coding-plan", "coding_plan_api_keys", "coding_plan_base_url", "qwen3-coder-plus",
         "qwen3-coder-plus"),
        ("coding-plan", "coding_plan_api_keys", "coding_plan_base_url", "qwen3-coder-flash",
         "qwen3-coder-next"),
        ("openrouter", "openrouter_api_keys", "openrouter_base_url", "qwen3-coder-plus",
         "qwen/qwen3-coder-plus"),
        ("fireworks", "fireworks_api_keys", "fireworks_base_url", "qwen3-coder-plus",
         "accounts/fireworks/models/qwen3-coder-480b-a35b-instruct"),
        ("dashscope", "dashscope_api_keys", "dashscope_base_url", "coder-model",
         "qwen3-coder-plus"),
    ],
)
def test_each_preset_reaches_its_upstream_with_its_alias_and_only_its_key(
    make_config, fake, fake_b, preset, key_field, base_field, model, upstream_model
):
    app = create_app(make_config(**{key_field: ("sk-dash-1",), base_field: fake_b.api_base}))
    response = chat(app.test_client(), f"{preset}:{model}")
    assert response.status_code == 200, response.json
    assert response.headers["X-Qwenproxy-Model"] == upstream_model
    sent = fake_b.chat_requests[-1]
    assert sent["body"]["model"] == upstream_model
    assert sent["headers"]["authorization"] == "Bearer sk-dash-1"
    assert sent["headers"]["user-agent"].startswith("qwenproxy/")  # some API fronts want one
    assert not any(h.startswith("x-dashscope") for h in sent["headers"])
    assert fake.chat_requests == []
    ids = [m["id"] for m in app.test_client().get("/v1/models").json["data"]]
    assert f"{preset}:{model}" in ids and f"{preset}:{upstream_model}" in ids


def test_openrouter_gets_its_attribution_header(make_config, fake_b):
    app = create_app(make_config(openrouter_api_keys=("sk-dash-1",),
                                 openrouter_base_url=fake_b.api_base))
    chat(app.test_client(), "openrouter:qwen3-coder-plus")
    assert fake_b.chat_requests[-1]["headers"]["x-openrouter-title"] == "qwenproxy"


def test_region_picks_the_documented_base_url():
    config = Config.from_env(environ={"CODING_PLAN_API_KEY": "sk-sp-x",
                                      "CODING_PLAN_REGION": "cn", "DASHSCOPE_API_KEY": "sk-y"},
                             dotenv_path=None)
    from qwenproxy.upstream.specs import key_backend_specs

    bases = {spec.name: spec.base_url for spec in key_backend_specs(config)}
    assert bases == {
        "coding-plan": "https://coding.dashscope.aliyuncs.com/v1",
        "dashscope": "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
    }


def test_model_aliases_from_config_reach_the_upstream_everywhere(make_config, fake, fake_b):
    app = create_app(make_config(
        dashscope_api_keys=("sk-dash-1",), dashscope_base_url=fake_b.api_base,
        model_aliases={"dashscope": {"fast": "qwen3-coder-flash"},
                       "qwen-oauth": {"qwen3-coder-plus": "qwen3-coder-plus"}},
    ))
    client = app.test_client()
    assert chat(client, "dashscope:fast").headers["X-Qwenproxy-Model"] == "qwen3-coder-flash"
    # The operator's table overrides the built-in qwen-oauth alias.
    chat(client, "qwen-oauth:qwen3-coder-plus")
    assert fake.chat_requests[-1]["body"]["model"] == "qwen3-coder-plus"
    client.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "!/oneoff(dashscope:fast) now"}]})
    client.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "!/create-failover-route(name=r)"}]})
    client.post("/v1/chat/completions", json={"messages": [
        {"role": "user", "content": "!/route-append(name=r, element=dashscope:fast)"}]})
    chat(client, "r")
    assert [r["body"]["model"] for r in fake_b.chat_requests] == ["qwen3-coder-flash"] * 3


@pytest.mark.parametrize("raw, says", [
    ("{not json", "not valid JSON"),
    ('{"nosuch": {"a": "b"}}', "unknown backend 'nosuch'"),
    ('{"dashscope": ["a"]}', "expected"),
    ("/nonexistent/aliases.json", "neither JSON nor a readable file"),
])
def test_bad_model_aliases_stop_start_up_naming_the_variable(raw, says):
    with pytest.raises(ConfigError) as caught:
        Config.from_env(environ={"MODEL_ALIASES": raw}, dotenv_path=None)
    assert "MODEL_ALIASES" in str(caught.value) and says in str(caught.value)


def test_model_aliases_from_a_file(tmp_path):
    path = tmp_path / "aliases.json"
    path.write_text('{"qwen-oauth": {"big": "coder-model"}}')
    config = Config.from_env(environ={"MODEL_ALIASES": str(path)}, dotenv_path=None)
    assert config.model_aliases == {"qwen-oauth": {"big": "coder-model"}}


def test_api_key_user_without_qwen_login_gets_the_key_backend_by_default(
    make_config, fake_b, tmp_path
):
    config = make_config(qwen_oauth_creds=(tmp_path / "none.json",),
                         dashscope_api_keys=("sk-dash-1",), dashscope_base_url=fake_b.api_base)
    client = create_app(config).test_client()
    response = chat(client, "qwen3-coder-plus")
    assert response.status_code == 200 and response.headers["X-Qwenproxy-Backend"] == "dashscope"
    owners = {m["owned_by"] for m in client.get("/v1/models").json["data"]}
    assert owners == {"dashscope"}


def test_ended_free_tier_gets_one_refresh_one_retry_then_names_working_keys(client, fake):
    fake.reject_every_token = True
    response = chat(client, "qwen3-coder-plus")
    assert response.status_code == 503
    error = response.json["error"]
    assert error["code"] == "qwen_oauth_access_ended"
    for key in ("DASHSCOPE_API_KEY", "CODING_PLAN_API_KEY", "OPENROUTER_API_KEY",
                "FIREWORKS_API_KEY", "doctor"):
        assert key in error["message"]
    assert fake.refresh_calls == 1 and len(fake.chat_requests) == 2
    # The account is paused: later requests get the same answer without a refresh or a call.
    again = chat(client, "qwen3-coder-plus")
    assert again.status_code == 503 and again.json["error"]["code"] == "qwen_oauth_access_ended"
    assert fake.refresh_calls == 1 and len(fake.chat_requests) == 2


def test_failover_route_skips_an_ended_oauth_account(make_config, fake, fake_b):
    app = create_app(make_config(
        dashscope_api_keys=("sk-dash-1",), dashscope_base_url=fake_b.api_base,
        failover_routes={"main": {"policy": "m",
                                  "elements": ["qwen-oauth:coder-model", "dashscope:qwen-max"]}},
    ))
    client = app.test_client()
    fake.reject_every_token = True
    assert chat(client, "main").headers["X-Qwenproxy-Backend"] == "dashscope"
    calls_to_oauth = len(fake.chat_requests)
    assert chat(client, "main").headers["X-Qwenproxy-Backend"] == "dashscope"
    assert len(fake.chat_requests) == calls_to_oauth  # paused: not tried again


# --- doctor (the real command) ---------------------------------------------------------


def doctor(env: dict[str, str], cwd, *args: str) -> subprocess.CompletedProcess:
    full = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT), "HOME": str(cwd),
            **env}
    return subprocess.run([sys.executable, "-m", "qwenproxy", "doctor", *args], env=full,
                          cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def doctor_env(fake, creds_path, tmp_path):
    return {"QWEN_OAUTH_CREDS": str(creds_path), "QWEN_OAUTH_URL": fake.url,
            "QWENPROXY_DATA_DIR": str(tmp_path / "data")}


def test_doctor_all_fine(doctor_env, tmp_path, fake, fake_b):
    env = {**doctor_env, "DASHSCOPE_API_KEY": "sk-dash-1", "DASHSCOPE_BASE_URL": fake_b.api_base,
           "PROXY_API_KEY": "sk-client-secret-7"}
    result = doctor(env, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[ok  ] qwen-oauth (default)" in out and "[ok  ] dashscope" in out
    assert "DASHSCOPE_API_KEY" in out and "set (1 key)" in out and "(env)" in out
    assert "LOG_LEVEL" in out and "(default)" in out
    for secret in ("sk-dash-1", "sk-client-secret-7", "tok-initial", "refresh-initial"):
        assert secret not in out + result.stderr
    assert fake.chat_requests[-1]["body"]["max_tokens"] == 1


def test_doctor_names_upstream_models_the_tables_do_not_know(doctor_env, tmp_path, fake, fake_b):
    fake_b.model_list = {
        "data": [{"id": "qwen3-coder-plus"}, {"id": "qwen4-max"}, {"id": "qwen3-max"}]
    }
    env = {
        **doctor_env,
        "DASHSCOPE_API_KEY": "sk-dash-1",
        "DASHSCOPE_BASE_URL": fake_b.api_base,
    }
    result = doctor(env, tmp_path)
    assert "upstream models the tables do not know: qwen4-max (" in result.stdout
    assert fake_b.model_list_requests[-1]["authorization"] == "Bearer sk-dash-1"
    report = json.loads(doctor(env, tmp_path, "--json").stdout)
    dashscope = next(c for c in report["backends"] if c["backend"] == "dashscope")
    assert dashscope["unknown_models"] == ["qwen4-max"]


def test_doctor_dead_refresh_token_says_auth_login(doctor_env, tmp_path, fake, creds_path):
    write_creds(creds_path, fake, expires_in=-60)
    fake.refresh_mode = "dead"
    result = doctor(doctor_env, tmp_path)
    assert result.returncode == 1
    assert "[FAIL] qwen-oauth (default)" in result.stdout
    assert "python -m qwenproxy auth login" in result.stdout


def test_doctor_backend_refusing_connections(doctor_env, tmp_path, fake):
    env = {**doctor_env, "DASHSCOPE_API_KEY": "sk-dash-1",
           "DASHSCOPE_BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    result = doctor(env, tmp_path)
    assert result.returncode == 0  # the default backend (qwen-oauth) still works
    assert "[FAIL] dashscope" in result.stdout
    assert "check the base URL" in result.stdout


def test_doctor_json(doctor_env, tmp_path, fake):
    fake.reject_every_token = True
    result = doctor(doctor_env, tmp_path, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["default_backend"] == "qwen-oauth"
    check = report["backends"][0]
    assert check["backend"] == "qwen-oauth" and check["ok"] is False
    assert "DASHSCOPE_API_KEY" in check["fix"]
    assert {s["name"] for s in report["settings"]} >= {"PORT", "LLM_BACKEND", "MODEL_ALIASES"}


def test_doctor_with_no_backend_at_all_names_the_keys(tmp_path):
    result = doctor({"QWEN_OAUTH_CREDS": str(tmp_path / "missing.json"),
                     "QWENPROXY_DATA_DIR": str(tmp_path / "d")}, tmp_path)
    assert result.returncode == 1
    assert "auth login" in result.stdout


def test_a_refusing_upstream_proxy_is_a_502_and_the_log_says_why(make_config, caplog):
    from tests.upstream.http.test_tunnel import TunnelingProxy

    proxy = TunnelingProxy("user:right-pass")
    wrong = f"http://user:wrong-pass@127.0.0.1:{proxy.port}"
    app = create_app(
        make_config(
            dashscope_api_keys=("sk-dash-1",),
            dashscope_base_url="https://upstream.test/v1",
            upstream_proxy=wrong,
        )
    )
    response = chat(app.test_client(), "dashscope:qwen3-coder-plus")
    proxy.close()
    assert response.status_code == 502
    message = response.json["error"]["message"]
    assert "through the upstream proxy" in message
    assert "127.0.0.1" not in message  # the proxy's address is for the operator's eyes
    assert "407" in caplog.text and f"127.0.0.1:{proxy.port}" in caplog.text
    assert "wrong-pass" not in caplog.text and "wrong-pass" not in message
    assert proxy.connects and proxy.connects[0].startswith(b"CONNECT upstream.test:443 ")


def test_doctor_shows_the_upstream_proxy_without_its_password():
    from qwenproxy.cli.doctor import describe_setting

    for url in ("http://me:hunter2@proxy.corp:3128", "http://tok3n-only@proxy.corp:3128"):
        shown = describe_setting(Config(upstream_proxy=url), "UPSTREAM_PROXY", "upstream_proxy")
        assert shown == "http://***@proxy.corp:3128"


def test_the_upstream_proxy_password_is_among_the_secrets_kept_out_of_logs():
    from qwenproxy.container import secrets_of

    config = Config(upstream_proxy="http://me:p%40ss-w0rd@proxy.corp:3128")
    assert {"p@ss-w0rd", "p%40ss-w0rd"} <= set(secrets_of(config, [])())
    token_only = Config(upstream_proxy="http://s3cr3t-token@proxy.corp:3128")
    assert "s3cr3t-token" in list(secrets_of(token_only, [])())


def test_doctor_on_a_platform_says_what_a_hosted_proxy_needs(doctor_env, tmp_path):
    result = doctor({**doctor_env, "RENDER": "true"}, tmp_path, "--offline")
    out = result.stdout
    assert "hosting:" in out
    assert "without DATABASE_URL" in out and "Render PostgreSQL" in out
    assert "TRUST_PROXY_HEADERS=true" in out and "PROXY_API_KEY" in out
    settled = {**doctor_env, "RENDER": "true", "TRUST_PROXY_HEADERS": "true",
               "PROXY_API_KEY": "k1", "DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}"}
    report = json.loads(doctor(settled, tmp_path, "--offline", "--json").stdout)
    assert report["hosting"] == []


def test_doctor_shows_the_database_url_without_its_password():
    from qwenproxy.cli.doctor import describe_setting

    config = Config.from_env({"DATABASE_URL": "postgres://qp:pg-secret-9@db:5432/qp"},
                             dotenv_path=None)
    shown = describe_setting(config, "DATABASE_URL", "database_url")
    assert shown == "postgresql+psycopg://***@db:5432/qp"
def test_the_plain_http_proxy_is_shown_and_kept_secret_like_the_other():
    from qwenproxy.cli.doctor import describe_setting
    from qwenproxy.container import secrets_of

    config = Config(upstream_http_proxy="http://me:hunter2-http@proxy.corp:8080")
    shown = describe_setting(config, "UPSTREAM_HTTP_PROXY", "upstream_http_proxy")
    assert shown == "http://***@proxy.corp:8080"
    assert "hunter2-http" in set(secrets_of(config, [])())
