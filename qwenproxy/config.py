"""Configuration: environment first, then `.env` in the working directory, then defaults.

This is the only module that reads the process environment. Everything else receives a
frozen `Config`. Invalid values raise `ConfigError` naming the variable.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

# Upstream facts (source: QwenLM/qwen-code, packages/core/src/qwen/qwenOAuth2.ts and
# qwenContentGenerator.ts).
QWEN_OAUTH_BASE_URL = "https://chat.qwen.ai"
DASHSCOPE_CN_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"

KNOWN_BACKENDS = ("qwen-oauth",)


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the variable."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def _parse_int(name: str, raw: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(name, f"expected a whole number, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(name, f"must be {bound}, got {value}")
    return value


def _parse_seconds(name: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(name, f"expected a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(name, f"must be a positive number of seconds, got {raw!r}")
    return value


def _parse_url(name: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not value.startswith(("http://", "https://")) or len(value) <= len("https://"):
        raise ConfigError(name, f"expected an http:// or https:// URL, got {raw!r}")
    return value


def _parse_log_level(name: str, raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(name, f"expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {raw!r}")
    return value


def _parse_keys(name: str, raw: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    for key in keys:
        if any(ch.isspace() for ch in key):
            raise ConfigError(name, "a key may not contain whitespace")
    return keys


def _parse_paths(name: str, raw: str) -> tuple[Path, ...]:
    paths = tuple(Path(p.strip()).expanduser() for p in raw.split(",") if p.strip())
    if not paths:
        raise ConfigError(name, "expected at least one path")
    return paths


def _parse_backend(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in KNOWN_BACKENDS:
        raise ConfigError(name, f"unknown backend {raw!r}; known: {', '.join(KNOWN_BACKENDS)}")
    return value


def _parse_text(name: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ConfigError(name, "must not be empty")
    return value


@dataclass(frozen=True)
class Setting:
    """One configuration variable: its name, default text and parser."""

    env: str
    attr: str
    default: str | None
    parse: Callable[[str, str], Any]
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("HOST", "host", "127.0.0.1", lambda n, v: _parse_text(n, v), "where `serve` listens"),
    Setting("PORT", "port", "8000", lambda n, v: _parse_int(n, v, 1, 65535), "port for `serve`"),
    Setting(
        "WEB_CONCURRENCY",
        "workers",
        "1",
        lambda n, v: _parse_int(n, v, 1, 64),
        "gunicorn worker processes",
    ),
    Setting(
        "PROXY_API_KEY",
        "proxy_api_keys",
        None,
        _parse_keys,
        "comma-separated client keys; unset: loopback clients only",
    ),
    Setting(
        "LLM_BACKEND",
        "llm_backend",
        "qwen-oauth",
        _parse_backend,
        "backend for model names without a `backend:` prefix",
    ),
    Setting(
        "DEFAULT_MODEL",
        "default_model",
        "qwen3-coder-plus",
        _parse_text,
        "model used when a request names none",
    ),
    Setting(
        "QWEN_OAUTH_CREDS",
        "qwen_oauth_creds",
        "~/.qwen/oauth_creds.json",
        _parse_paths,
        "qwen-code's credentials file",
    ),
    Setting(
        "QWEN_OAUTH_URL",
        "qwen_oauth_url",
        QWEN_OAUTH_BASE_URL,
        _parse_url,
        "base of the OAuth endpoints",
    ),
    Setting(
        "QWEN_API_BASE",
        "qwen_api_base",
        DASHSCOPE_CN_BASE_URL,
        _parse_url,
        "API base when the creds file has no resource_url",
    ),
    Setting(
        "QWEN_USER_AGENT",
        "qwen_user_agent",
        None,
        lambda n, v: _parse_text(n, v),
        "User-Agent sent to the qwen-oauth backend",
    ),
    Setting(
        "UPSTREAM_CONNECT_TIMEOUT",
        "upstream_connect_timeout",
        "10",
        _parse_seconds,
        "seconds to connect to an upstream",
    ),
    Setting(
        "UPSTREAM_READ_TIMEOUT",
        "upstream_read_timeout",
        "300",
        _parse_seconds,
        "seconds an upstream may stay silent",
    ),
    Setting(
        "MAX_BODY_BYTES",
        "max_body_bytes",
        str(10 * 1024 * 1024),
        lambda n, v: _parse_int(n, v, 1024),
        "largest request body accepted",
    ),
    Setting(
        "TRUST_PROXY_HEADERS",
        "trust_proxy_headers",
        "false",
        _parse_bool,
        "use X-Forwarded-For to find the client address",
    ),
    Setting(
        "GRACEFUL_TIMEOUT",
        "graceful_timeout",
        "30",
        _parse_seconds,
        "seconds in-flight requests get on shutdown",
    ),
    Setting("LOG_LEVEL", "log_level", "INFO", _parse_log_level, "logging level"),
)


@dataclass(frozen=True)
class Config:
    """All settings of one proxy process. Build it with `Config.from_env()`."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    proxy_api_keys: tuple[str, ...] = ()
    llm_backend: str = "qwen-oauth"
    default_model: str = "qwen3-coder-plus"
    qwen_oauth_creds: tuple[Path, ...] = (Path("~/.qwen/oauth_creds.json").expanduser(),)
    qwen_oauth_url: str = QWEN_OAUTH_BASE_URL
    qwen_api_base: str = DASHSCOPE_CN_BASE_URL
    qwen_user_agent: str | None = None
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 300.0
    max_body_bytes: int = 10 * 1024 * 1024
    trust_proxy_headers: bool = False
    graceful_timeout: float = 30.0
    log_level: str = "INFO"
    # Where each variable's value came from: "env", ".env" or "default".
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
            if setting.env in env:
                raw, source = env[setting.env], "env"
            elif dotenv.get(setting.env) is not None:
                raw, source = dotenv[setting.env], ".env"
            else:
                raw, source = setting.default, "default"
            sources[setting.env] = source
            if raw is None:
                continue
            values[setting.attr] = setting.parse(setting.env, raw)
        return cls(**values, sources=sources)

    @property
    def client_auth_enabled(self) -> bool:
        return bool(self.proxy_api_keys)

    @property
    def log_level_number(self) -> int:
        return logging.getLevelName(self.log_level)
