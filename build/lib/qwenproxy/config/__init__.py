"""Configuration: environment first, then `.env` in the working directory, then defaults.

This is the only module that reads the process environment. Everything else receives a
frozen `Config`. Invalid values raise `ConfigError` naming the variable.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import (
    dataclass,
    field,
)
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from qwenproxy.config.settings import (
    BUILTIN_BACKENDS,
    CODING_PLAN_WINDOWS,
    DASHSCOPE_CN_BASE_URL,
    QWEN_OAUTH_BASE_URL,
    SETTINGS,
    Setting,
)
from qwenproxy.config.values import (
    LOOP_DEFAULTS,
    ConfigError,
    parse_keys,
    parse_url,
)

log = logging.getLogger(__name__)


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
