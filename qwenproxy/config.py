"""Configuration: environment first, then `.env` in the working directory, then defaults.

This is the only module that reads the process environment. Everything else receives a
frozen `Config`. Invalid values raise `ConfigError` naming the variable.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from qwenproxy.config_values import (
    LOOP_DEFAULTS,
    ConfigError,
    parse_aliases,
    parse_backend,
    parse_backend_switches,
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
    parse_model_info,
    parse_model_map,
    parse_paths,
    parse_prefix,
    parse_prices,
    parse_proxy_url,
    parse_quota_windows,
    parse_retention,
    parse_routes,
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


@dataclass(frozen=True)
class Setting:
    """One configuration variable: its name, default text and parser."""

    env: str
    attr: str
    default: str | None
    parse: Callable[[str, str], Any]
    help: str
    also: tuple[str, ...] = ()  # conventional names read when `env` is not set


SETTINGS: tuple[Setting, ...] = (
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
    Setting("DASHSCOPE_API_KEY", "dashscope_api_keys", None, parse_keys, "DashScope API key(s)"),
    Setting(
        "DASHSCOPE_REGION",
        "dashscope_region",
        "intl",
        parse_choice("intl", "cn", "us"),
        "DashScope region",
    ),
    Setting(
        "DASHSCOPE_BASE_URL", "dashscope_base_url", None, parse_url, "DashScope base URL override"
    ),
    Setting(
        "CODING_PLAN_API_KEY",
        "coding_plan_api_keys",
        None,
        parse_keys,
        "Alibaba Cloud Coding Plan key(s) (sk-sp-...)",
    ),
    Setting(
        "CODING_PLAN_REGION",
        "coding_plan_region",
        "intl",
        parse_choice("intl", "cn"),
        "Coding Plan region",
    ),
    Setting(
        "CODING_PLAN_BASE_URL",
        "coding_plan_base_url",
        None,
        parse_url,
        "Coding Plan base URL override",
    ),
    Setting(
        "CODING_PLAN_TIER",
        "coding_plan_tier",
        "pro",
        parse_choice("pro", "lite", "none"),
        "Coding Plan tier whose request windows apply by default (none: no windows)",
    ),
    Setting(
        "QUOTA_WINDOWS",
        "quota_windows",
        None,
        parse_quota_windows,
        "request windows per upstream key, by backend (JSON or a file path)",
    ),
    Setting("OPENROUTER_API_KEY", "openrouter_api_keys", None, parse_keys, "OpenRouter key(s)"),
    Setting(
        "OPENROUTER_BASE_URL",
        "openrouter_base_url",
        None,
        parse_url,
        "OpenRouter base URL override",
    ),
    Setting("FIREWORKS_API_KEY", "fireworks_api_keys", None, parse_keys, "Fireworks AI key(s)"),
    Setting(
        "FIREWORKS_BASE_URL", "fireworks_base_url", None, parse_url, "Fireworks base URL override"
    ),
    Setting(
        "MODEL_ALIASES",
        "model_aliases",
        None,
        parse_aliases,
        "per-backend alias table (JSON or a file path)",
    ),
    Setting(
        "MODEL_INFO",
        "model_info",
        None,
        parse_model_info,
        "per-backend context windows and output limits (JSON or a file path)",
    ),
    Setting(
        "CONTEXT_GUARD",
        "context_guard",
        "true",
        parse_bool,
        "answer prompts longer than the model's window locally, before any upstream call",
    ),
    Setting(
        "CONTEXT_MIN_OUTPUT_TOKENS",
        "context_min_output_tokens",
        "1024",
        lambda n, v: parse_int(n, v, 1, 1_000_000),
        "room for the answer below which a prompt counts as too long",
    ),
    Setting(
        "MODEL_LIST_REFRESH",
        "model_list_refresh",
        "6h",
        lambda n, v: 0.0 if v.strip().lower() in ("0", "off", "false") else parse_duration(n, v),
        "how often the upstreams' model lists are read (0: never)",
    ),
    Setting(
        "FAILOVER_ROUTES",
        "failover_routes",
        None,
        parse_routes,
        "failover routes declared at start-up (JSON or a file path)",
    ),
    Setting(
        "ANTHROPIC_MODEL_MAP",
        "anthropic_model_map",
        None,
        parse_model_map,
        "model for vendor model names (claude-*, gpt-*) on /v1/messages and /v1/responses",
    ),
    Setting(
        "CACHE_MARKERS",
        "cache_markers",
        None,
        parse_backend_switches,
        "per backend: forward the Anthropic door's cache_control markers (JSON or a file)",
    ),
    Setting(
        "MODEL_PRICES",
        "model_prices",
        None,
        parse_prices,
        "per-backend price table per million tokens (JSON or a file)",
    ),
)


@dataclass(frozen=True)
class Platform:
    """A Heroku-style platform, recognised by a variable it sets in every process."""

    name: str
    variable: str


# Each platform's own variable (Heroku and Dokku: DYNO, devcenter.heroku.com/articles/
# dynos#local-environment-variables; Render: RENDER=true, render.com/docs/environment-
# variables; Railway: RAILWAY_ENVIRONMENT, docs.railway.com/reference/variables; Fly:
# FLY_APP_NAME, fly.io/docs/machines/runtime-environment/).
PLATFORMS = (
    Platform("Heroku", "DYNO"),
    Platform("Render", "RENDER"),
    Platform("Railway", "RAILWAY_ENVIRONMENT"),
    Platform("Fly.io", "FLY_APP_NAME"),
)


def detect_platform(env: Mapping[str, str]) -> Platform | None:
    for platform in PLATFORMS:
        if env.get(platform.variable, "").strip():
            return platform
    return None


@dataclass(frozen=True)
class CustomBackend:
    """An operator-declared OpenAI-compatible upstream (BACKEND_<NAME>_*)."""

    name: str
    base_url: str
    api_keys: tuple[str, ...] = field(repr=False)
    models: tuple[str, ...] = ()


_CUSTOM_BACKEND = re.compile(r"^BACKEND_([A-Z0-9_]+)_BASE_URL$")


def _custom_backends(
    merged: Mapping[str, str], sources: dict[str, str], origin: Mapping[str, str]
) -> tuple[CustomBackend, ...]:
    found = []
    for key in sorted(merged):
        match = _CUSTOM_BACKEND.match(key)
        if not match:
            continue
        stem = match.group(1)
        name = stem.lower().replace("_", "-").strip("-")
        if name in BUILTIN_BACKENDS:
            raise ConfigError(key, f"{name!r} is a built-in backend; pick another name")
        base = parse_url(key, merged[key])
        keys_var, models_var = f"BACKEND_{stem}_API_KEY", f"BACKEND_{stem}_MODELS"
        keys = parse_keys(keys_var, merged.get(keys_var, ""))
        models = tuple(m.strip() for m in merged.get(models_var, "").split(",") if m.strip())
        for var in (key, keys_var, models_var):
            if var in merged:
                sources[var] = origin[var]
        found.append(CustomBackend(name, base, keys, models))
    return tuple(found)


def _lookup(
    setting: Setting, env: Mapping[str, str], dotenv: Mapping[str, str | None]
) -> tuple[str | None, str, str]:
    """(raw value, source, variable) of one setting: its own name in the environment, then
    in `.env`; then its conventional names (HTTPS_PROXY...), environment first, where set
    and not empty; then the default."""
    if setting.env in env:
        return env[setting.env], "env", setting.env
    if dotenv.get(setting.env) is not None:
        return dotenv[setting.env], ".env", setting.env
    for name in setting.also:
        for source, values in (("env", env), (".env", dotenv)):
            value = values.get(name)
            if value is not None and value.strip():
                return value, source, name
    return setting.default, "default", setting.env


@dataclass(frozen=True)
class Config:
    """All settings of one proxy process. Build it with `Config.from_env()`."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    proxy_api_keys: tuple[str, ...] = field(default=(), repr=False)
    llm_backend: str = "qwen-oauth"
    default_model: str = "qwen3-coder-plus"
    qwen_oauth_creds: tuple[Path, ...] = (Path("~/.qwen/oauth_creds.json").expanduser(),)
    qwen_oauth_url: str = QWEN_OAUTH_BASE_URL
    qwen_api_base: str = DASHSCOPE_CN_BASE_URL
    qwen_user_agent: str | None = None
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 300.0
    upstream_proxy: str | None = field(default=None, repr=False)  # may hold a password
    upstream_http_proxy: str | None = field(default=None, repr=False)  # may hold one too
    upstream_no_proxy: tuple[str, ...] = ()
    upstream_ca_bundle: Path | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    trust_proxy_headers: bool = False
    graceful_timeout: float = 30.0
    log_level: str = "INFO"
    command_prefix: str = "!/"
    session_ttl: float = 86400.0
    client_keys_refresh: float = 5.0
    dashboard_session_ttl: float = 12 * 3600.0
    data_dir: Path = Path("./.qwenproxy")
    database_url: str | None = None
    disable_accounting: bool = False
    ledger_retention: float | None = 90 * 86400.0
    log_format: str = "human"
    loop_detection: bool = True
    loop_min_pattern: int = LOOP_DEFAULTS.min_pattern
    loop_min_repeats: int = LOOP_DEFAULTS.min_repeats
    loop_short_pattern: int = LOOP_DEFAULTS.short_pattern
    loop_short_repeats: int = LOOP_DEFAULTS.short_repeats
    redact_api_keys_in_prompts: bool = True
    stream_keepalive: float = 15.0
    nonstream_keepalive: float = 0.0
    dashscope_api_keys: tuple[str, ...] = field(default=(), repr=False)
    dashscope_region: str = "intl"
    dashscope_base_url: str | None = None
    coding_plan_api_keys: tuple[str, ...] = field(default=(), repr=False)
    coding_plan_region: str = "intl"
    coding_plan_base_url: str | None = None
    coding_plan_tier: str = "pro"
    quota_windows: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    openrouter_api_keys: tuple[str, ...] = field(default=(), repr=False)
    openrouter_base_url: str | None = None
    fireworks_api_keys: tuple[str, ...] = field(default=(), repr=False)
    fireworks_base_url: str | None = None
    model_aliases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    failover_routes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    model_info: Mapping[str, Mapping[str, Mapping[str, int]]] = field(default_factory=dict)
    context_guard: bool = True
    context_min_output_tokens: int = 1024
    model_list_refresh: float = 6 * 3600.0
    anthropic_model_map: Mapping[str, str] = field(default_factory=dict)
    cache_markers: Mapping[str, bool] = field(default_factory=dict)
    model_prices: Mapping[str, Mapping[str, Mapping[str, Any] | None]] = field(
        default_factory=dict
    )
    custom_backends: tuple[CustomBackend, ...] = field(default=(), repr=False)
    # The hosting platform the process runs on, told by the platform's own variable
    # (PLATFORMS); None elsewhere.
    platform: Platform | None = None
    # Where each variable's value came from: "env", ".env" or "default" (with the
    # conventional name that gave it, e.g. "env HTTPS_PROXY").
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        dotenv_path: str | os.PathLike[str] | None = ".env",
    ) -> Config:
        """Read settings from `environ` (default: the process), then `.env`, then defaults."""
        env = os.environ if environ is None else environ
        dotenv: dict[str, str | None] = {}
        if dotenv_path is not None and Path(dotenv_path).is_file():
            dotenv = dotenv_values(dotenv_path)
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for setting in SETTINGS:
            raw, source, name = _lookup(setting, env, dotenv)
            sources[setting.env] = source if name == setting.env else f"{source} {name}"
            if raw is None:
                continue
            try:
                values[setting.attr] = setting.parse(name, raw)
            except ConfigError as exc:
                if name == setting.env:
                    raise
                # A conventional variable set for other tools (HTTPS_PROXY=socks5://...)
                # must not stop the proxy: it is ignored, and the log says so.
                sources[setting.env] = "default"
                log.warning("%s ignored: %s", name, str(exc).split(": ", 1)[1])
        merged = {k: v for k, v in dotenv.items() if v is not None}
        origin = {k: ".env" for k in merged}
        for key in env:
            if key.startswith("BACKEND_"):
                merged[key], origin[key] = env[key], "env"
        values["custom_backends"] = _custom_backends(merged, sources, origin)
        values["platform"] = detect_platform(env)
        config = cls(**values, sources=sources)
        config.validate()
        return config

    def backend_names(self) -> tuple[str, ...]:
        """Every backend this configuration knows, enabled or not."""
        return BUILTIN_BACKENDS + tuple(b.name for b in self.custom_backends)

    def validate(self) -> None:
        """Cross-setting checks: names that must refer to known backends."""
        known = self.backend_names()
        if self.llm_backend not in known:
            raise ConfigError(
                "LLM_BACKEND", f"unknown backend {self.llm_backend!r}; known: {', '.join(known)}"
            )
        for route, spec in self.failover_routes.items():
            if route.lower() in known:
                raise ConfigError("FAILOVER_ROUTES", f"route {route!r} has a backend's name")
            for element in spec["elements"]:
                prefix, sep, _ = element.partition(":")
                if sep and prefix.strip().lower() not in known:
                    raise ConfigError(
                        "FAILOVER_ROUTES",
                        f"route {route!r}: unknown backend {prefix!r} in {element!r}",
                    )
        for variable, tables in (
            ("MODEL_ALIASES", self.model_aliases),
            ("MODEL_INFO", self.model_info),
            ("CACHE_MARKERS", self.cache_markers),
            ("MODEL_PRICES", self.model_prices),
            ("QUOTA_WINDOWS", self.quota_windows),
        ):
            for backend in tables:
                if backend not in known:
                    raise ConfigError(
                        variable, f"unknown backend {backend!r}; known: {', '.join(known)}"
                    )

    def effective_quota_windows(self) -> dict[str, dict[str, int]]:
        """QUOTA_WINDOWS over the Coding Plan tier's defaults (CODING_PLAN_TIER): the
        request windows of each backend, as {backend: {window: limit}}."""
        windows: dict[str, dict[str, int]] = {}
        tier = CODING_PLAN_WINDOWS.get(self.coding_plan_tier)
        if tier:
            windows["coding-plan"] = dict(tier)
        for backend, table in self.quota_windows.items():
            windows[backend] = dict(table)
        return {backend: table for backend, table in windows.items() if table}

    @property
    def client_auth_enabled(self) -> bool:
        return bool(self.proxy_api_keys)

    @property
    def log_level_number(self) -> int:
        return logging.getLevelName(self.log_level)
