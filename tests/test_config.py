"""Config.from_env: environment beats .env beats defaults; invalid values name the variable."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from qwenproxy.config import (
    DASHSCOPE_CN_BASE_URL,
    QWEN_OAUTH_BASE_URL,
    SETTINGS,
    Config,
    ConfigError,
)

ALL_VARIABLES = [s.env for s in SETTINGS]


@pytest.fixture(autouse=True)
def fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`~` expands to a directory of the test's own, never the developer's home."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def write_dotenv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / ".env"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path, fake_home: Path) -> None:
    config = Config.from_env(environ={}, dotenv_path=tmp_path / "absent.env")
    assert config.host == "127.0.0.1"
    assert config.port == 8000
    assert config.workers == 1
    assert config.proxy_api_keys == ()
    assert config.client_auth_enabled is False
    assert config.llm_backend == "qwen-oauth"
    assert config.default_model == "qwen3-coder-plus"
    assert config.qwen_oauth_creds == (fake_home / ".qwen" / "oauth_creds.json",)
    assert config.qwen_oauth_url == QWEN_OAUTH_BASE_URL == "https://chat.qwen.ai"
    assert config.qwen_api_base == DASHSCOPE_CN_BASE_URL
    assert config.qwen_user_agent is None
    assert config.upstream_connect_timeout == 10.0
    assert config.upstream_read_timeout == 300.0
    assert config.max_body_bytes == 10 * 1024 * 1024
    assert config.trust_proxy_headers is False
    assert config.graceful_timeout == 30.0
    assert config.log_level == "INFO"
    assert config.log_level_number == 20
    assert dict(config.sources) == {name: "default" for name in ALL_VARIABLES}


def test_defaults_agree_with_the_dataclass_defaults() -> None:
    # Config() (used by tests and code that builds a Config by hand) must mean the same
    # thing as an empty environment.
    # (The dataclass default for the creds path was expanded at import time with the real
    # HOME, which this module replaces; everything else must be equal.)
    from_env = Config.from_env(environ={}, dotenv_path=None)
    by_hand = Config()
    assert replace(from_env, qwen_oauth_creds=()) == replace(by_hand, qwen_oauth_creds=())
    assert by_hand.qwen_oauth_creds[0].parts[-2:] == (".qwen", "oauth_creds.json")


def test_environment_beats_dotenv_beats_defaults(tmp_path: Path) -> None:
    dotenv = write_dotenv(
        tmp_path,
        "PORT=9001\nLOG_LEVEL=debug\nDEFAULT_MODEL=from-dotenv\n# a comment\n",
    )
    config = Config.from_env(environ={"PORT": "9002", "HOST": "0.0.0.0"}, dotenv_path=dotenv)
    assert config.port == 9002  # env wins over .env
    assert config.host == "0.0.0.0"  # env only
    assert config.log_level == "DEBUG"  # .env only
    assert config.default_model == "from-dotenv"
    assert config.workers == 1  # neither: default
    assert config.sources["PORT"] == "env"
    assert config.sources["HOST"] == "env"
    assert config.sources["LOG_LEVEL"] == ".env"
    assert config.sources["DEFAULT_MODEL"] == ".env"
    assert config.sources["WEB_CONCURRENCY"] == "default"
    assert config.sources["PROXY_API_KEY"] == "default"


def test_dotenv_quoting_and_export_syntax(tmp_path: Path) -> None:
    dotenv = write_dotenv(
        tmp_path, "export PROXY_API_KEY=\"k1,k2\"\nQWEN_USER_AGENT='my agent/1.0'\n"
    )
    config = Config.from_env(environ={}, dotenv_path=dotenv)
    assert config.proxy_api_keys == ("k1", "k2")
    assert config.qwen_user_agent == "my agent/1.0"
    assert config.sources["PROXY_API_KEY"] == ".env"


def test_missing_dotenv_file_is_fine(tmp_path: Path) -> None:
    config = Config.from_env(environ={"PORT": "1234"}, dotenv_path=tmp_path / "nope" / ".env")
    assert config.port == 1234


def test_environment_value_that_is_empty_still_counts_as_set(tmp_path: Path) -> None:
    # An empty PROXY_API_KEY in the environment overrides the .env one (env beats .env).
    dotenv = write_dotenv(tmp_path, "PROXY_API_KEY=secret\n")
    config = Config.from_env(environ={"PROXY_API_KEY": ""}, dotenv_path=dotenv)
    assert config.sources["PROXY_API_KEY"] == "env"
    assert config.proxy_api_keys == ()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "0"),
        ("PORT", "65536"),
        ("PORT", "80.5"),
        ("WEB_CONCURRENCY", "0"),
        ("UPSTREAM_READ_TIMEOUT", "-1"),
        ("UPSTREAM_READ_TIMEOUT", "0"),
        ("UPSTREAM_CONNECT_TIMEOUT", "soon"),
        ("UPSTREAM_CONNECT_TIMEOUT", "nan"),
        ("GRACEFUL_TIMEOUT", "-5"),
        ("MAX_BODY_BYTES", "10"),
        ("LOG_LEVEL", "LOUD"),
        ("LLM_BACKEND", "nope"),
        ("QWEN_OAUTH_URL", "ftp://x"),
        ("QWEN_OAUTH_URL", "chat.qwen.ai"),
        ("QWEN_API_BASE", "https://"),
        ("TRUST_PROXY_HEADERS", "maybe"),
        ("HOST", "   "),
        ("DEFAULT_MODEL", ""),
        ("PROXY_API_KEY", "good,has space"),
    ],
)
def test_invalid_value_raises_config_error_naming_the_variable(
    tmp_path: Path, variable: str, value: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(environ={variable: value}, dotenv_path=None)
    assert caught.value.variable == variable
    assert variable in str(caught.value)


def test_invalid_value_in_dotenv_names_the_variable(tmp_path: Path) -> None:
    dotenv = write_dotenv(tmp_path, "PORT=eighty\n")
    with pytest.raises(ConfigError, match="PORT"):
        Config.from_env(environ={}, dotenv_path=dotenv)


def test_invalid_dotenv_value_is_ignored_when_environment_overrides_it(tmp_path: Path) -> None:
    dotenv = write_dotenv(tmp_path, "PORT=eighty\n")
    assert Config.from_env(environ={"PORT": "8080"}, dotenv_path=dotenv).port == 8080


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_boolean_values(raw: str, expected: bool) -> None:
    config = Config.from_env(environ={"TRUST_PROXY_HEADERS": raw}, dotenv_path=None)
    assert config.trust_proxy_headers is expected


def test_numbers_and_normalisation() -> None:
    config = Config.from_env(
        environ={
            "PORT": " 8443 ",
            "UPSTREAM_READ_TIMEOUT": "2.5",
            "LOG_LEVEL": "warning",
            "LLM_BACKEND": "QWEN-OAUTH",
            "QWEN_OAUTH_URL": "http://127.0.0.1:9000/",
        },
        dotenv_path=None,
    )
    assert config.port == 8443
    assert config.upstream_read_timeout == 2.5
    assert config.log_level == "WARNING"
    assert config.llm_backend == "qwen-oauth"
    assert config.qwen_oauth_url == "http://127.0.0.1:9000"  # trailing slash dropped


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("only-key", ("only-key",)),
        ("k1,k2", ("k1", "k2")),
        (" k1 , k2 ,, k3, ", ("k1", "k2", "k3")),
        ("", ()),
        (" , ", ()),
    ],
)
def test_proxy_api_key_comma_list(raw: str, expected: tuple[str, ...]) -> None:
    config = Config.from_env(environ={"PROXY_API_KEY": raw}, dotenv_path=None)
    assert config.proxy_api_keys == expected
    assert config.client_auth_enabled is bool(expected)


def test_qwen_oauth_creds_comma_list_and_home_expansion(fake_home: Path, tmp_path: Path) -> None:
    raw = f"~/.qwen/oauth_creds.json, {tmp_path}/second.json ,,~/third.json"
    config = Config.from_env(environ={"QWEN_OAUTH_CREDS": raw}, dotenv_path=None)
    assert config.qwen_oauth_creds == (
        fake_home / ".qwen" / "oauth_creds.json",
        tmp_path / "second.json",
        fake_home / "third.json",
    )
    assert all("~" not in str(p) for p in config.qwen_oauth_creds)


@pytest.mark.parametrize("raw", ["", " , "])
def test_qwen_oauth_creds_needs_at_least_one_path(raw: str) -> None:
    with pytest.raises(ConfigError, match="QWEN_OAUTH_CREDS"):
        Config.from_env(environ={"QWEN_OAUTH_CREDS": raw}, dotenv_path=None)


def test_custom_backends_come_from_env_and_dotenv(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("BACKEND_MY_VLLM_BASE_URL=http://127.0.0.1:8001/v1\n"
                      "BACKEND_MY_VLLM_MODELS=a, b\nLLM_BACKEND=my-vllm\n")
    config = Config.from_env(
        environ={"BACKEND_ACME_BASE_URL": "https://acme.test/v1", "BACKEND_ACME_API_KEY": "k1,k2"},
        dotenv_path=dotenv,
    )
    by_name = {b.name: b for b in config.custom_backends}
    assert by_name["my-vllm"].models == ("a", "b") and by_name["my-vllm"].api_keys == ()
    assert by_name["acme"].api_keys == ("k1", "k2")
    assert config.llm_backend == "my-vllm"
    assert config.sources["BACKEND_ACME_BASE_URL"] == "env"
    assert config.sources["BACKEND_MY_VLLM_BASE_URL"] == ".env"
    assert "k1" not in repr(config)


def test_a_custom_backend_may_not_take_a_builtin_name():
    with pytest.raises(ConfigError) as caught:
        Config.from_env(environ={"BACKEND_DASHSCOPE_BASE_URL": "https://x.test/v1"},
                        dotenv_path=None)
    assert "BACKEND_DASHSCOPE_BASE_URL" in str(caught.value)


def test_upstream_proxy_takes_the_conventional_variables_too(tmp_path: Path) -> None:
    config = Config.from_env(
        environ={
            "HTTPS_PROXY": "http://u:p@proxy.corp:3128",
            "NO_PROXY": "Internal.corp, 10.0.0.0/8",
        },
        dotenv_path=None,
    )
    assert config.upstream_proxy == "http://u:p@proxy.corp:3128"
    assert config.upstream_no_proxy == ("internal.corp", "10.0.0.0/8")
    assert config.sources["UPSTREAM_PROXY"] == "env HTTPS_PROXY"
    assert "u:p" not in repr(config)
    mine = Config.from_env(
        environ={"UPSTREAM_PROXY": "proxy.mine:8080", "https_proxy": "http://other:1"},
        dotenv_path=None,
    )
    assert mine.upstream_proxy == "http://proxy.mine:8080"
    assert mine.sources["UPSTREAM_PROXY"] == "env"


def test_the_plain_http_proxy_takes_http_proxy_and_no_other() -> None:
    config = Config.from_env(
        environ={"HTTP_PROXY": "http://proxy.corp:3128", "HTTPS_PROXY": "http://tls.corp:1"},
        dotenv_path=None,
    )
    assert config.upstream_http_proxy == "http://proxy.corp:3128"
    assert config.upstream_proxy == "http://tls.corp:1"
    assert config.sources["UPSTREAM_HTTP_PROXY"] == "env HTTP_PROXY"
    mine = Config.from_env(
        environ={"UPSTREAM_HTTP_PROXY": "proxy.mine:8080", "http_proxy": "http://other:1"},
        dotenv_path=None,
    )
    assert mine.upstream_http_proxy == "http://proxy.mine:8080"
    assert Config.from_env(environ={}, dotenv_path=None).upstream_http_proxy is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("UPSTREAM_HTTP_PROXY", "socks5://proxy:1080"),
        ("UPSTREAM_PROXY", "socks5://proxy:1080"),
        ("UPSTREAM_PROXY", "https://proxy:443"),
        ("UPSTREAM_PROXY", "http://proxy:port"),
        ("UPSTREAM_PROXY", "http://proxy:99999"),
        ("UPSTREAM_PROXY", "http://fe80::1"),
        ("UPSTREAM_CA_BUNDLE", "/nonexistent/ca.pem"),
    ],
)
def test_bad_proxy_settings_name_the_variable_that_holds_them(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(environ={variable: value}, dotenv_path=None)
    assert caught.value.variable == variable


def test_an_inherited_proxy_variable_qwenproxy_cannot_use_is_ignored_not_fatal(caplog) -> None:
    # A shell that exports a SOCKS or https:// proxy for other tools must still serve.
    config = Config.from_env(
        environ={"HTTPS_PROXY": "socks5://me:secret@proxy:1080"}, dotenv_path=None
    )
    assert config.upstream_proxy is None
    assert config.sources["UPSTREAM_PROXY"] == "default"
    assert "HTTPS_PROXY ignored" in caplog.text
    assert "secret" not in caplog.text


def test_a_password_with_url_characters_stays_a_password() -> None:
    from qwenproxy.config.secrets import split_proxy_url

    address = split_proxy_url("http://alice:2024#Spring/?x@proxy.corp:3128")
    assert (address.host, address.port) == ("proxy.corp", 3128)
    assert (address.username, address.password) == ("alice", "2024#Spring/?x")
    assert split_proxy_url("[fd00::1]:8080").host == "fd00::1"
    assert split_proxy_url("proxy.corp").port == 80


def test_a_urls_credentials_are_read_in_one_place() -> None:
    from qwenproxy.config.secrets import split_credentials, url_secrets

    assert split_credentials("http://a:b%40c@h:1") == ("http://", "a:b%40c", "h:1")
    assert split_credentials("a:b@h") == ("", "a:b", "h")
    assert split_credentials("http://h:1") == ("http://", None, "h:1")
    # the password as written and as sent; a lone user name is the secret (a token)
    assert url_secrets("http://alice:p%40ss@h:1") == ("p%40ss", "p@ss")
    assert url_secrets("http://tok123@h:1") == ("tok123",)
    assert url_secrets("http://h:1") == ()


def test_a_bad_proxy_url_error_repeats_nothing_of_it() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(environ={"UPSTREAM_PROXY": "http://me:pa55w0rd@proxy:port"},
                        dotenv_path=None)
    assert "pa55w0rd" not in str(caught.value)


def test_the_proxy_setting_in_dotenv_beats_an_inherited_https_proxy(tmp_path: Path) -> None:
    dotenv = write_dotenv(tmp_path, "UPSTREAM_PROXY=http://corp:3128\nUPSTREAM_NO_PROXY=a.corp\n")
    config = Config.from_env(
        environ={"HTTPS_PROXY": "http://other:8080", "NO_PROXY": "b.corp"}, dotenv_path=dotenv
    )
    assert config.upstream_proxy == "http://corp:3128"
    assert config.upstream_no_proxy == ("a.corp",)
    off = write_dotenv(tmp_path, "UPSTREAM_PROXY=\n")
    assert not Config.from_env(environ={"HTTPS_PROXY": "http://other:8080"},
                               dotenv_path=off).upstream_proxy
    # An empty HTTPS_PROXY does not hide a set https_proxy.
    both = Config.from_env(environ={"HTTPS_PROXY": "", "https_proxy": "http://low:1"},
                           dotenv_path=None)
    assert both.upstream_proxy == "http://low:1"


def test_no_proxy_entries_with_ports_brackets_and_wildcards() -> None:
    config = Config.from_env(
        environ={"NO_PROXY": "host.corp:8080, [fd00::1]:443, *.internal, 10.0.0.0/8"},
        dotenv_path=None,
    )
    assert config.upstream_no_proxy == ("host.corp", "fd00::1", ".internal", "10.0.0.0/8")


def test_the_ca_bundle_takes_requests_and_openssl_conventions(tmp_path: Path, caplog) -> None:
    import trustme

    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    config = Config.from_env(environ={"REQUESTS_CA_BUNDLE": str(bundle)}, dotenv_path=None)
    assert config.upstream_ca_bundle == bundle
    assert config.sources["UPSTREAM_CA_BUNDLE"] == "env REQUESTS_CA_BUNDLE"
    broken = Config.from_env(environ={"SSL_CERT_FILE": str(tmp_path / "gone.pem")},
                             dotenv_path=None)
    assert broken.upstream_ca_bundle is None  # an inherited variable never stops start-up
    assert "SSL_CERT_FILE ignored" in caplog.text


# --- hosting: DATABASE_URL forms, NONSTREAM_KEEPALIVE, the platform -------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgres://u:pw@db.example:5432/d", "postgresql+psycopg://u:pw@db.example:5432/d"),
        ("postgresql://u:pw@h/d?sslmode=require", "postgresql+psycopg://u:pw@h/d?sslmode=require"),
        (
            "POSTGRES://u:p%40ss@h/d?sslmode=verify-full&sslrootcert=/ca.pem",
            "postgresql+psycopg://u:p%40ss@h/d?sslmode=verify-full&sslrootcert=/ca.pem",
        ),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("sqlite:////var/lib/qwenproxy/q.db", "sqlite:////var/lib/qwenproxy/q.db"),
        ("  postgres://u@h/d  ", "postgresql+psycopg://u@h/d"),
    ],
)
def test_database_url_takes_the_platforms_forms(raw: str, expected: str, tmp_path: Path) -> None:
    config = Config.from_env({"DATABASE_URL": raw}, dotenv_path=None)
    assert config.database_url == expected


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("mysql://root:hunter2secret@h/d", "'mysql'"),
        ("postgresql+psycopg2://u:hunter2secret@h/d", "'postgresql+psycopg2'"),
        ("hunter2secret@h/d", "no scheme"),
        ("postgres://", "'postgres'"),
    ],
)
def test_a_database_url_the_proxy_cannot_use_names_the_variable_and_the_forms(
    raw: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"DATABASE_URL": raw}, dotenv_path=None)
    message = str(caught.value)
    assert message.startswith("DATABASE_URL: ") and shown in message
    assert "postgres://" in message and "postgresql+psycopg://" in message and "sqlite" in message
    assert "hunter2secret" not in message


@pytest.mark.parametrize(
    ("raw", "expected"), [("", 0.0), ("0", 0.0), ("0.0", 0.0), ("20", 20.0), ("1.5", 1.5)]
)
def test_nonstream_keepalive_is_off_by_default_and_takes_seconds(raw: str, expected: float) -> None:
    assert Config.from_env({}, dotenv_path=None).nonstream_keepalive == 0.0
    config = Config.from_env({"NONSTREAM_KEEPALIVE": raw}, dotenv_path=None)
    assert config.nonstream_keepalive == expected


@pytest.mark.parametrize("raw", ["soon", "-5", "0.5", "7200", "nan"])
def test_a_bad_nonstream_keepalive_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="^NONSTREAM_KEEPALIVE: "):
        Config.from_env({"NONSTREAM_KEEPALIVE": raw}, dotenv_path=None)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"DYNO": "web.1"}, "Heroku"),
        ({"RENDER": "true"}, "Render"),
        ({"RAILWAY_ENVIRONMENT": "production"}, "Railway"),
        ({"FLY_APP_NAME": "my-proxy"}, "Fly.io"),
    ],
)
def test_the_platform_is_told_by_its_own_variable(env: dict[str, str], name: str) -> None:
    platform = Config.from_env(env, dotenv_path=None).platform
    assert platform is not None and platform.name == name and platform.variable in env


def test_no_platform_variable_no_platform(tmp_path: Path) -> None:
    assert Config.from_env({"DYNO": ""}, dotenv_path=None).platform is None
    # .env is the operator's file, not the platform's environment
    dotenv = write_dotenv(tmp_path, "DYNO=web.1\n")
    assert Config.from_env({}, dotenv_path=dotenv).platform is None
def test_model_info_takes_json_or_a_file(tmp_path: Path) -> None:
    text = (
        '{"dashscope": {"qwen3-coder-plus": '
        '{"context_length": 1000000, "max_output_tokens": 65536}}}'
    )
    inline = Config.from_env({"MODEL_INFO": text}, dotenv_path=None)
    assert inline.model_info == {
        "dashscope": {"qwen3-coder-plus": {"context_length": 1000000, "max_output_tokens": 65536}}
    }
    path = tmp_path / "info.json"
    path.write_text(text)
    assert Config.from_env({"MODEL_INFO": str(path)}, dotenv_path=None).model_info == (
        inline.model_info
    )


@pytest.mark.parametrize(
    "raw, words",
    [
        ('{"dashscope": {"m": {"context": 5}}}', "unknown field 'context'"),
        ('{"dashscope": {"m": {"context_length": 0}}}', "positive integer"),
        ('{"dashscope": {"m": {"context_length": "1M"}}}', "positive integer"),
        ('{"nowhere": {"m": {"context_length": 5}}}', "unknown backend 'nowhere'"),
        ('["x"]', "expected"),
    ],
)
def test_bad_model_info_names_the_variable(raw: str, words: str) -> None:
    with pytest.raises(ConfigError, match="MODEL_INFO") as caught:
        Config.from_env({"MODEL_INFO": raw}, dotenv_path=None)
    assert words in str(caught.value)


def test_context_guard_settings() -> None:
    config = Config.from_env(
        {"CONTEXT_GUARD": "false", "CONTEXT_MIN_OUTPUT_TOKENS": "2048", "MODEL_LIST_REFRESH": "0"},
        dotenv_path=None,
    )
    assert (config.context_guard, config.context_min_output_tokens) == (False, 2048)
    assert config.model_list_refresh == 0
    assert (
        Config.from_env({"MODEL_LIST_REFRESH": "3h"}, dotenv_path=None).model_list_refresh == 10800
    )
    with pytest.raises(ConfigError, match="CONTEXT_MIN_OUTPUT_TOKENS"):
        Config.from_env({"CONTEXT_MIN_OUTPUT_TOKENS": "0"}, dotenv_path=None)
# --- prompt caching and prices ----------------------------------------------------------


def test_cache_markers_switches_per_backend(tmp_path: Path) -> None:
    config = Config.from_env(
        environ={"CACHE_MARKERS": '{"Dashscope": false, "openrouter": true}'}, dotenv_path=None
    )
    assert config.cache_markers == {"dashscope": False, "openrouter": True}


@pytest.mark.parametrize(
    "variable, raw, says",
    [
        ("CACHE_MARKERS", '{"dashscope": "yes"}', "true or false"),
        ("CACHE_MARKERS", '{"nope": true}', "unknown backend 'nope'"),
        ("CACHE_MARKERS", "[1]", "true or false"),
        ("MODEL_PRICES", '{"nope": {}}', "unknown backend 'nope'"),
        ("MODEL_PRICES", '{"dashscope": {"m": {"input": 1}}}', "needs `output`"),
        ("MODEL_PRICES", '{"dashscope": {"m": {"input": -1, "output": 1}}}', "number >= 0"),
        ("MODEL_PRICES", '{"dashscope": {"m": {"input": 1, "output": 1, "x": 2}}}', "unknown"),
        ("MODEL_PRICES", '{"dashscope": {"m": 3}}', "object or null"),
        (
            "MODEL_PRICES",
            '{"dashscope": {"m": {"tiers": [{"input": 1, "output": 1},'
            ' {"input": 2, "output": 2}]}}}',
            "needs `up_to`",
        ),
        (
            "MODEL_PRICES",
            '{"dashscope": {"m": {"tiers": [{"up_to": 9, "input": 1, "output": 1},'
            ' {"up_to": 5, "input": 1, "output": 1}, {"input": 2, "output": 2}]}}}',
            "must grow",
        ),
        ("MODEL_PRICES", "/no/such/prices.json", "neither JSON nor a readable file"),
    ],
)
def test_bad_cache_and_price_settings_name_the_variable(variable: str, raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env(environ={variable: raw}, dotenv_path=None)
    assert caught.value.variable == variable
    assert says in str(caught.value)


def test_model_prices_are_normalised_to_tiers() -> None:
    config = Config.from_env(
        environ={"MODEL_PRICES": '{"dashscope": {"m": {"input": 1, "output": 2}, "n": null}}'},
        dotenv_path=None,
    )
    assert config.model_prices == {
        "dashscope": {
            "m": {"currency": "USD", "tiers": [{"input": 1.0, "output": 2.0, "up_to": None}]},
            "n": None,
        }
    }


def test_coding_plan_has_the_pro_windows_unless_the_tier_says_otherwise():
    assert Config.from_env({}, dotenv_path=None).effective_quota_windows() == {
        "coding-plan": {"5h": 6000, "7d": 45000, "30d": 90000}
    }
    lite = Config.from_env({"CODING_PLAN_TIER": "lite"}, dotenv_path=None)
    assert lite.effective_quota_windows() == {"coding-plan": {"5h": 1200, "7d": 9000, "30d": 18000}}
    none = Config.from_env({"CODING_PLAN_TIER": "none"}, dotenv_path=None)
    assert none.effective_quota_windows() == {}


def test_quota_windows_come_from_json_or_a_file(tmp_path):
    path = tmp_path / "windows.json"
    path.write_text('{"openrouter": {"1d": 50}, "coding-plan": {"5h": 10}}')
    config = Config.from_env({"QUOTA_WINDOWS": str(path)}, dotenv_path=None)
    assert config.effective_quota_windows() == {
        "coding-plan": {"5h": 10}, "openrouter": {"1d": 50}
    }


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ('{"nope": {"1d": 5}}', "unknown backend 'nope'"),
        ('{"openrouter": {"5x": 5}}', "window '5x'"),
        ('{"openrouter": {"1d": 0}}', "positive whole number"),
        ('{"openrouter": {"1d": 2.5}}', "positive whole number"),
        ('{"openrouter": 5}', "expected an object of windows"),
        ("[1]", "expected an object"),
    ],
)
def test_bad_quota_windows_are_refused_naming_the_variable(raw, words):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"QUOTA_WINDOWS": raw}, dotenv_path=None)
    assert "QUOTA_WINDOWS" in str(caught.value) and words in str(caught.value)


def test_loop_settings_default_to_the_detectors_one_set_of_defaults() -> None:
    from qwenproxy.config.values import LOOP_DEFAULTS

    config = Config.from_env(environ={}, dotenv_path=None)
    assert (
        config.loop_min_pattern,
        config.loop_min_repeats,
        config.loop_short_pattern,
        config.loop_short_repeats,
    ) == (100, 4, 20, 12)
    assert LOOP_DEFAULTS.min_pattern == config.loop_min_pattern == Config().loop_min_pattern
