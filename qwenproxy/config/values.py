"""How one configuration value is read: a parser per kind of value (numbers, durations,
URLs, key lists, JSON tables), each raising `ConfigError` that names the variable."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the variable."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(f"{variable}: {message}")
        self.variable = variable


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def parse_int(name: str, raw: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(name, f"expected a whole number, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(name, f"must be {bound}, got {value}")
    return value


def parse_seconds(name: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(name, f"expected a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(name, f"must be a positive number of seconds, got {raw!r}")
    return value


def parse_url(name: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not value.startswith(("http://", "https://")) or len(value) <= len("https://"):
        raise ConfigError(name, f"expected an http:// or https:// URL, got {raw!r}")
    return value


def parse_log_level(name: str, raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(name, f"expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {raw!r}")
    return value


def parse_keys(name: str, raw: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    for key in keys:
        if any(ch.isspace() for ch in key):
            raise ConfigError(name, "a key may not contain whitespace")
    return keys


def parse_paths(name: str, raw: str) -> tuple[Path, ...]:
    paths = tuple(Path(p.strip()).expanduser() for p in raw.split(",") if p.strip())
    if not paths:
        raise ConfigError(name, "expected at least one path")
    return paths


def parse_backend(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if not value:
        raise ConfigError(name, "must name a backend")
    return value


def parse_text(name: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        raise ConfigError(name, "must not be empty")
    return value


def parse_prefix(name: str, raw: str) -> str:
    value = raw.strip()
    if not 2 <= len(value) <= 10 or not value.isprintable() or any(c.isspace() for c in value):
        raise ConfigError(name, f"must be 2-10 printable characters without spaces, got {raw!r}")
    return value


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration_seconds(text: str) -> float:
    """Seconds from `90`, `90s`, `30m`, `24h` or `7d` (> 0); ValueError otherwise."""
    value = text.strip().lower()
    factor = 1.0
    if value and value[-1] in DURATION_UNITS:
        factor, value = DURATION_UNITS[value[-1]], value[:-1]
    try:
        seconds = float(value) * factor
    except ValueError:
        raise ValueError(f"expected a duration such as 90s, 30m, 24h or 7d, got {text!r}") from None
    if not seconds > 0:  # also refuses nan
        raise ValueError(f"expected a positive duration, got {text!r}")
    return seconds


def parse_duration(name: str, raw: str) -> float:
    try:
        return duration_seconds(raw)
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from None


def parse_retention(name: str, raw: str) -> float | None:
    """A duration of at least a day, or `none` / `forever` (keep every row)."""
    if raw.strip().lower() in ("none", "forever", "off"):
        return None
    seconds = parse_duration(name, raw)
    if seconds < 86400:
        raise ConfigError(name, f"expected at least 1d (or `forever`), got {raw!r}")
    return seconds


def parse_choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ConfigError(name, f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def parse_host_list(name: str, raw: str) -> tuple[str, ...]:
    """NO_PROXY style: host names, `.domain` or `*.domain` suffixes, IP addresses or
    networks, or `*`; a `:port` on an entry is ignored (every port of the host matches)."""
    hosts = []
    for entry in raw.split(","):
        entry = entry.strip().lower()
        if entry.startswith("["):  # [ipv6] or [ipv6]:port
            entry = entry[1:].partition("]")[0]
        elif entry.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
            entry = entry.partition(":")[0]
        if entry.startswith("*."):
            entry = entry[1:]
        if entry:
            hosts.append(entry)
    return tuple(hosts)


def parse_ca_bundle(name: str, raw: str) -> Path:
    """A PEM file of CA certificates, checked now rather than at the first request."""
    path = Path(raw.strip()).expanduser()
    if not path.is_file():
        raise ConfigError(name, f"no such file: {path}")
    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError, ValueError):
        raise ConfigError(name, f"{path} holds no PEM CA certificates") from None
    return path


# What DATABASE_URL may hold. Platforms' PostgreSQL add-ons hand out `postgres://` or
# `postgresql://` URLs (Heroku: devcenter.heroku.com/articles/connecting-heroku-postgres;
# Render: render.com/docs/postgresql-creating-connecting; Railway:
# docs.railway.com/guides/postgresql; Fly: fly.io/docs/postgres/managing/attach-detach/):
# both are served by psycopg 3, the driver the proxy ships.
_DATABASE_SCHEMES = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
}


DATABASE_URL_FORMS = (
    "postgres://user:password@host:5432/db, postgresql://..., postgresql+psycopg://... "
    "(query parameters such as ?sslmode=require are kept) or sqlite:///path/to/file.db"
)


def parse_database_url(name: str, raw: str) -> str:
    """A SQLAlchemy URL the proxy can open: `postgres://` and `postgresql://` become
    `postgresql+psycopg://` (psycopg 3), everything after the scheme is kept as written.
    The error never repeats the URL: it may hold a password."""
    value = raw.strip()
    scheme, sep, rest = value.partition("://")
    driver = _DATABASE_SCHEMES.get(scheme.lower()) if sep else None
    if driver is None or not rest:
        shown = f"scheme {scheme.lower()!r}" if sep and scheme else "no scheme"
        raise ConfigError(name, f"cannot use a URL with {shown}; accepted: {DATABASE_URL_FORMS}")
    return f"{driver}://{rest}"


def parse_keepalive(name: str, raw: str) -> float:
    """Seconds between keep-alive bytes, 1 to 3600; 0 (or empty) turns them off."""
    text = raw.strip()
    if text in ("", "0"):
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(name, f"expected a number of seconds (0: off), got {raw!r}") from None
    if value == 0:
        return 0.0
    if not 1 <= value <= 3600:
        raise ConfigError(name, f"must be 0 (off) or between 1 and 3600 seconds, got {raw!r}")
    return value


@dataclass(frozen=True)
class LoopThresholds:
    """What counts as a loop (see LoopDetector). LOOP_DEFAULTS is the one place the
    defaults are written: the LOOP_* settings and the pipeline's guards start from it."""

    min_pattern: int = 100
    min_repeats: int = 4
    short_pattern: int = 20
    short_repeats: int = 12


LOOP_DEFAULTS = LoopThresholds()


@dataclass(frozen=True)
class Setting:
    """One configuration variable: its name, default text and parser."""

    env: str
    attr: str
    default: str | None
    parse: Callable[[str, str], Any]
    help: str
    also: tuple[str, ...] = ()  # conventional names read when `env` is not set
