"""Every setting the proxy reads: its variable, the Config attribute it fills, its default, its
parser and the help line `doctor` and the README's table show; plus the upstream facts the
defaults are made of (Qwen's OAuth and DashScope addresses, the built-in backends, Coding
Plan's quota windows)."""

from __future__ import annotations

import logging
from pathlib import Path

from qwenproxy.config.backend_settings import BACKEND_SETTINGS
from qwenproxy.config.secrets import parse_proxy_url
from qwenproxy.config.values import (
    LOOP_DEFAULTS,
    Setting,
    parse_backend,
    parse_bool,
    parse_ca_bundle,
    parse_choice,
    parse_database_url,
    parse_duration,
    parse_host_list,
    parse_int,
    parse_keepalive,
    parse_keys,
    parse_log_level,
    parse_paths,
    parse_prefix,
    parse_retention,
    parse_seconds,
    parse_text,
    parse_url,
)

log = logging.getLogger(__name__)


# Upstream facts (source: QwenLM/qwen-code, packages/core/src/qwen/qwenOAuth2.ts and
# qwenContentGenerator.ts).
QWEN_OAUTH_BASE_URL = "https://chat.qwen.ai"


DASHSCOPE_CN_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"


# Built-in backends; operators add more with BACKEND_<NAME>_BASE_URL / _API_KEY.
# Alibaba Cloud Coding Plan's request quotas per key: Pro 6,000 per 5 hours, 45,000 per
# week, 90,000 per month; Lite 1,200 / 9,000 / 18,000 (the plan's pages as summarised in
# issue 17 and DESIGN.md "Plans, limits and caching", late 2026).
CODING_PLAN_WINDOWS = {
    "pro": {"5h": 6000, "7d": 45000, "30d": 90000},
    "lite": {"5h": 1200, "7d": 9000, "30d": 18000},
    "none": {},
}


BUILTIN_BACKENDS = ("qwen-oauth", "dashscope", "coding-plan", "openrouter", "fireworks")


# The proxy itself: serving, clients, upstream connections, the ledger, the guards.
_SERVER: tuple[Setting, ...] = (
    Setting("HOST", "host", "127.0.0.1", lambda n, v: parse_text(n, v), "where `serve` listens"),
    Setting("PORT", "port", "8000", lambda n, v: parse_int(n, v, 1, 65535), "port for `serve`"),
    Setting(
        "WEB_CONCURRENCY",
        "workers",
        "1",
        lambda n, v: parse_int(n, v, 1, 64),
        "gunicorn worker processes",
    ),
    Setting(
        "PROXY_API_KEY",
        "proxy_api_keys",
        None,
        parse_keys,
        "comma-separated client keys; unset: loopback clients only",
    ),
    Setting(
        "LLM_BACKEND",
        "llm_backend",
        "qwen-oauth",
        parse_backend,
        "backend for model names without a `backend:` prefix",
    ),
    Setting(
        "DEFAULT_MODEL",
        "default_model",
        "qwen3-coder-plus",
        parse_text,
        "model used when a request names none",
    ),
    Setting(
        "QWEN_OAUTH_CREDS",
        "qwen_oauth_creds",
        "~/.qwen/oauth_creds.json",
        parse_paths,
        "qwen-code's credentials file",
    ),
    Setting(
        "QWEN_OAUTH_URL",
        "qwen_oauth_url",
        QWEN_OAUTH_BASE_URL,
        parse_url,
        "base of the OAuth endpoints",
    ),
    Setting(
        "QWEN_API_BASE",
        "qwen_api_base",
        DASHSCOPE_CN_BASE_URL,
        parse_url,
        "API base when the creds file has no resource_url",
    ),
    Setting(
        "QWEN_USER_AGENT",
        "qwen_user_agent",
        None,
        lambda n, v: parse_text(n, v),
        "User-Agent sent to the qwen-oauth backend",
    ),
    Setting(
        "UPSTREAM_CONNECT_TIMEOUT",
        "upstream_connect_timeout",
        "10",
        parse_seconds,
        "seconds to connect to an upstream",
    ),
    Setting(
        "UPSTREAM_READ_TIMEOUT",
        "upstream_read_timeout",
        "300",
        parse_seconds,
        "seconds an upstream may stay silent",
    ),
    Setting(
        "UPSTREAM_PROXY",
        "upstream_proxy",
        None,
        parse_proxy_url,
        "HTTP proxy that HTTPS upstreams are reached through (CONNECT)",
        also=("HTTPS_PROXY", "https_proxy"),
    ),
    Setting(
        "UPSTREAM_HTTP_PROXY",
        "upstream_http_proxy",
        None,
        parse_proxy_url,
        "HTTP proxy that plain-http upstreams are reached through (absolute-form requests)",
        also=("HTTP_PROXY", "http_proxy"),
    ),
    Setting(
        "UPSTREAM_NO_PROXY",
        "upstream_no_proxy",
        None,
        parse_host_list,
        "hosts, .domains or networks reached without the proxy (loopback always is)",
        also=("NO_PROXY", "no_proxy"),
    ),
    Setting(
        "UPSTREAM_CA_BUNDLE",
        "upstream_ca_bundle",
        None,
        parse_ca_bundle,
        "PEM file of the CAs trusted for upstream TLS (instead of certifi's bundle)",
        also=("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"),
    ),
    Setting(
        "MAX_BODY_BYTES",
        "max_body_bytes",
        str(10 * 1024 * 1024),
        lambda n, v: parse_int(n, v, 1024),
        "largest request body accepted",
    ),
    Setting(
        "TRUST_PROXY_HEADERS",
        "trust_proxy_headers",
        "false",
        parse_bool,
        "use X-Forwarded-For to find the client address",
    ),
    Setting(
        "GRACEFUL_TIMEOUT",
        "graceful_timeout",
        "30",
        parse_seconds,
        "seconds in-flight requests get on shutdown",
    ),
    Setting("LOG_LEVEL", "log_level", "INFO", parse_log_level, "logging level"),
    Setting("COMMAND_PREFIX", "command_prefix", "!/", parse_prefix, "in-chat command prefix"),
    Setting("SESSION_TTL", "session_ttl", "24h", parse_duration, "idle sessions expire after"),
    Setting(
        "CLIENT_KEYS_REFRESH",
        "client_keys_refresh",
        "5",
        parse_seconds,
        "seconds between reloads of the named client keys (revocation delay)",
    ),
    Setting(
        "DASHBOARD_SESSION_TTL",
        "dashboard_session_ttl",
        "12h",
        parse_duration,
        "a dashboard login lasts",
    ),
    Setting(
        "QWENPROXY_DATA_DIR",
        "data_dir",
        "./.qwenproxy",
        lambda n, v: Path(parse_text(n, v)).expanduser(),
        "directory of the default SQLite database",
    ),
    Setting(
        "DATABASE_URL",
        "database_url",
        None,
        parse_database_url,
        "URL of the shared database: postgres://, postgresql://, postgresql+psycopg:// or "
        "sqlite:/// (default: SQLite in the data dir)",
    ),
    Setting(
        "DISABLE_ACCOUNTING",
        "disable_accounting",
        "false",
        parse_bool,
        "turn the usage ledger off",
    ),
    Setting(
        "LEDGER_RETENTION",
        "ledger_retention",
        "90d",
        parse_retention,
        "raw ledger rows older than this are deleted (aggregates are kept)",
    ),
    Setting("LOG_FORMAT", "log_format", "human", parse_choice("human", "json"), "log line format"),
    Setting("LOOP_DETECTION", "loop_detection", "true", parse_bool, "stop looping streams"),
    Setting(
        "LOOP_MIN_PATTERN",
        "loop_min_pattern",
        str(LOOP_DEFAULTS.min_pattern),
        lambda n, v: parse_int(n, v, 20, 100000),
        "shortest repeated block that counts as a loop",
    ),
    Setting(
        "LOOP_MIN_REPEATS",
        "loop_min_repeats",
        str(LOOP_DEFAULTS.min_repeats),
        lambda n, v: parse_int(n, v, 2, 1000),
        "back-to-back repeats of such a block",
    ),
    Setting(
        "LOOP_SHORT_PATTERN",
        "loop_short_pattern",
        str(LOOP_DEFAULTS.short_pattern),
        lambda n, v: parse_int(n, v, 4, 100000),
        "shortest short block",
    ),
    Setting(
        "LOOP_SHORT_REPEATS",
        "loop_short_repeats",
        str(LOOP_DEFAULTS.short_repeats),
        lambda n, v: parse_int(n, v, 2, 10000),
        "back-to-back repeats of a short block",
    ),
    Setting(
        "REDACT_API_KEYS_IN_PROMPTS",
        "redact_api_keys_in_prompts",
        "true",
        parse_bool,
        "replace secrets in prompts before forwarding",
    ),
    Setting(
        "STREAM_KEEPALIVE",
        "stream_keepalive",
        "15",
        parse_seconds,
        "seconds of upstream silence before a `: ping` frame",
    ),
    Setting(
        "NONSTREAM_KEEPALIVE",
        "nonstream_keepalive",
        "0",
        parse_keepalive,
        "seconds after which a slow non-stream answer gets its 200 and a space every as many "
        "seconds until its JSON (0: off)",
    ),
)
SETTINGS: tuple[Setting, ...] = (*_SERVER, *BACKEND_SETTINGS)
