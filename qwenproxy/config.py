"""Configuration: environment first, then `.env` in the working directory, then defaults.

This is the only module that reads the process environment. Everything else receives a
frozen `Config`. Invalid values raise `ConfigError` naming the variable.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

# Upstream facts (source: QwenLM/qwen-code, packages/core/src/qwen/qwenOAuth2.ts and
# qwenContentGenerator.ts).
QWEN_OAUTH_BASE_URL = "https://chat.qwen.ai"
DASHSCOPE_CN_BASE_URL = "https://dashscope.aliyuncs.com/compatible-mode/v1"

# Built-in backends; operators add more with BACKEND_<NAME>_BASE_URL / _API_KEY.
BUILTIN_BACKENDS = ("qwen-oauth", "dashscope", "coding-plan", "openrouter", "fireworks")


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
    if not value:
        raise ConfigError(name, "must name a backend")
    return value


def _parse_text(name: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ConfigError(name, "must not be empty")
    return value


def _parse_prefix(name: str, raw: str) -> str:
    value = raw.strip()
    if not 2 <= len(value) <= 10 or not value.isprintable() or any(c.isspace() for c in value):
        raise ConfigError(name, f"must be 2-10 printable characters without spaces, got {raw!r}")
    return value


def _parse_duration(name: str, raw: str) -> float:
    """Seconds, or a number with s/m/h/d (`90`, `30m`, `24h`, `7d`)."""
    value = raw.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    factor = 1
    if value and value[-1] in units:
        factor, value = units[value[-1]], value[:-1]
    try:
        seconds = float(value) * factor
    except ValueError:
        raise ConfigError(
            name, f"expected a duration such as 90, 30m, 24h or 7d, got {raw!r}"
        ) from None
    if not seconds > 0:
        raise ConfigError(name, f"must be a positive duration, got {raw!r}")
    return seconds


def _parse_choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ConfigError(name, f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _parse_json_or_file(name: str, raw: str) -> Any:
    """Inline JSON, or the path of a file that holds it."""
    text = raw.strip()
    if not text.startswith(("{", "[")):
        path = Path(text).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(
                name, f"is neither JSON nor a readable file ({exc.strerror})"
            ) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(name, f"is not valid JSON: {exc}") from None


def _parse_aliases(name: str, raw: str) -> dict[str, dict[str, str]]:
    value = _parse_json_or_file(name, raw)
    if not isinstance(value, dict) or not all(
        isinstance(table, dict)
        and all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in table.items())
        for table in value.values()
    ):
        raise ConfigError(name, 'expected {"<backend>": {"<alias>": "<upstream model>"}}')
    return {backend.strip().lower(): dict(table) for backend, table in value.items()}


def _parse_routes(name: str, raw: str) -> dict[str, dict[str, Any]]:
    value = _parse_json_or_file(name, raw)
    shape = 'expected {"<route>": {"policy": "k|m|km|mk", "elements": ["backend:model", ...]}}'
    if not isinstance(value, dict):
        raise ConfigError(name, shape)
    routes: dict[str, dict[str, Any]] = {}
    for route, spec in value.items():
        if isinstance(spec, list):
            spec = {"policy": "m", "elements": spec}
        if (
            not isinstance(spec, dict)
            or spec.get("policy", "m") not in ("k", "m", "km", "mk")
            or not isinstance(spec.get("elements"), list)
            or not all(isinstance(e, str) and e.strip() for e in spec["elements"])
        ):
            raise ConfigError(name, f"route {route!r}: {shape}")
        routes[str(route)] = {"policy": spec.get("policy", "m"), "elements": list(spec["elements"])}
    return routes


def _parse_model_map(name: str, raw: str) -> dict[str, str]:
    """`backend:model` for every vendor model name, or a JSON object of glob -> model."""
    text = raw.strip()
    if not text.startswith("{"):
        return {"*": _parse_text(name, text)}
    value = _parse_json_or_file(name, text)
    if not isinstance(value, dict) or not all(
        isinstance(v, str) and v.strip() for v in value.values()
    ):
        raise ConfigError(name, 'expected "backend:model" or {"claude-*": "backend:model"}')
    return {str(k): v.strip() for k, v in value.items()}


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
    Setting("COMMAND_PREFIX", "command_prefix", "!/", _parse_prefix, "in-chat command prefix"),
    Setting("SESSION_TTL", "session_ttl", "24h", _parse_duration, "idle sessions expire after"),
    Setting(
        "QWENPROXY_DATA_DIR",
        "data_dir",
        "./.qwenproxy",
        lambda n, v: Path(_parse_text(n, v)).expanduser(),
        "directory of the default SQLite database",
    ),
    Setting(
        "DATABASE_URL",
        "database_url",
        None,
        _parse_text,
        "SQLAlchemy URL of the shared database (default: SQLite in the data dir)",
    ),
    Setting(
        "DISABLE_ACCOUNTING",
        "disable_accounting",
        "false",
        _parse_bool,
        "turn the usage ledger off",
    ),
    Setting("LOG_FORMAT", "log_format", "human", _parse_choice("human", "json"), "log line format"),
    Setting("LOOP_DETECTION", "loop_detection", "true", _parse_bool, "stop looping streams"),
    Setting(
        "LOOP_MIN_PATTERN",
        "loop_min_pattern",
        "100",
        lambda n, v: _parse_int(n, v, 20, 100000),
        "shortest repeated block that counts as a loop",
    ),
    Setting(
        "LOOP_MIN_REPEATS",
        "loop_min_repeats",
        "4",
        lambda n, v: _parse_int(n, v, 2, 1000),
        "back-to-back repeats of such a block",
    ),
    Setting(
        "LOOP_SHORT_PATTERN",
        "loop_short_pattern",
        "20",
        lambda n, v: _parse_int(n, v, 4, 100000),
        "shortest short block",
    ),
    Setting(
        "LOOP_SHORT_REPEATS",
        "loop_short_repeats",
        "12",
        lambda n, v: _parse_int(n, v, 2, 10000),
        "back-to-back repeats of a short block",
    ),
    Setting(
        "REDACT_API_KEYS_IN_PROMPTS",
        "redact_api_keys_in_prompts",
        "true",
        _parse_bool,
        "replace secrets in prompts before forwarding",
    ),
    Setting(
        "STREAM_KEEPALIVE",
        "stream_keepalive",
        "15",
        _parse_seconds,
        "seconds of upstream silence before a `: ping` frame",
    ),
    Setting("DASHSCOPE_API_KEY", "dashscope_api_keys", None, _parse_keys, "DashScope API key(s)"),
    Setting(
        "DASHSCOPE_REGION",
        "dashscope_region",
        "intl",
        _parse_choice("intl", "cn", "us"),
        "DashScope region",
    ),
    Setting(
        "DASHSCOPE_BASE_URL", "dashscope_base_url", None, _parse_url, "DashScope base URL override"
    ),
    Setting(
        "CODING_PLAN_API_KEY",
        "coding_plan_api_keys",
        None,
        _parse_keys,
        "Alibaba Cloud Coding Plan key(s) (sk-sp-...)",
    ),
    Setting(
        "CODING_PLAN_REGION",
        "coding_plan_region",
        "intl",
        _parse_choice("intl", "cn"),
        "Coding Plan region",
    ),
    Setting(
        "CODING_PLAN_BASE_URL",
        "coding_plan_base_url",
        None,
        _parse_url,
        "Coding Plan base URL override",
    ),
    Setting("OPENROUTER_API_KEY", "openrouter_api_keys", None, _parse_keys, "OpenRouter key(s)"),
    Setting(
        "OPENROUTER_BASE_URL",
        "openrouter_base_url",
        None,
        _parse_url,
        "OpenRouter base URL override",
    ),
    Setting("FIREWORKS_API_KEY", "fireworks_api_keys", None, _parse_keys, "Fireworks AI key(s)"),
    Setting(
        "FIREWORKS_BASE_URL", "fireworks_base_url", None, _parse_url, "Fireworks base URL override"
    ),
    Setting(
        "MODEL_ALIASES",
        "model_aliases",
        None,
        _parse_aliases,
        "per-backend alias table (JSON or a file path)",
    ),
    Setting(
        "FAILOVER_ROUTES",
        "failover_routes",
        None,
        _parse_routes,
        "failover routes declared at start-up (JSON or a file path)",
    ),
    Setting(
        "ANTHROPIC_MODEL_MAP",
        "anthropic_model_map",
        None,
        _parse_model_map,
        "model for vendor model names (claude-*, gpt-*) on /v1/messages and /v1/responses",
    ),
)


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
        base = _parse_url(key, merged[key])
        keys_var, models_var = f"BACKEND_{stem}_API_KEY", f"BACKEND_{stem}_MODELS"
        keys = _parse_keys(keys_var, merged.get(keys_var, ""))
        models = tuple(m.strip() for m in merged.get(models_var, "").split(",") if m.strip())
        for var in (key, keys_var, models_var):
            if var in merged:
                sources[var] = origin[var]
        found.append(CustomBackend(name, base, keys, models))
    return tuple(found)


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
    max_body_bytes: int = 10 * 1024 * 1024
    trust_proxy_headers: bool = False
    graceful_timeout: float = 30.0
    log_level: str = "INFO"
    command_prefix: str = "!/"
    session_ttl: float = 86400.0
    data_dir: Path = Path("./.qwenproxy")
    database_url: str | None = None
    disable_accounting: bool = False
    log_format: str = "human"
    loop_detection: bool = True
    loop_min_pattern: int = 100
    loop_min_repeats: int = 4
    loop_short_pattern: int = 20
    loop_short_repeats: int = 12
    redact_api_keys_in_prompts: bool = True
    stream_keepalive: float = 15.0
    dashscope_api_keys: tuple[str, ...] = field(default=(), repr=False)
    dashscope_region: str = "intl"
    dashscope_base_url: str | None = None
    coding_plan_api_keys: tuple[str, ...] = field(default=(), repr=False)
    coding_plan_region: str = "intl"
    coding_plan_base_url: str | None = None
    openrouter_api_keys: tuple[str, ...] = field(default=(), repr=False)
    openrouter_base_url: str | None = None
    fireworks_api_keys: tuple[str, ...] = field(default=(), repr=False)
    fireworks_base_url: str | None = None
    model_aliases: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    failover_routes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    anthropic_model_map: Mapping[str, str] = field(default_factory=dict)
    custom_backends: tuple[CustomBackend, ...] = field(default=(), repr=False)
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
        merged = {k: v for k, v in dotenv.items() if v is not None}
        origin = {k: ".env" for k in merged}
        for key in env:
            if key.startswith("BACKEND_"):
                merged[key], origin[key] = env[key], "env"
        values["custom_backends"] = _custom_backends(merged, sources, origin)
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
        for backend in self.model_aliases:
            if backend not in known:
                raise ConfigError(
                    "MODEL_ALIASES", f"unknown backend {backend!r}; known: {', '.join(known)}"
                )

    @property
    def client_auth_enabled(self) -> bool:
        return bool(self.proxy_api_keys)

    @property
    def log_level_number(self) -> int:
        return logging.getLevelName(self.log_level)
