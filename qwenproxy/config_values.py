"""How one configuration value is read: a parser per kind of value (numbers, durations,
URLs, key lists, JSON tables), each raising `ConfigError` that names the variable."""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote


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


def parse_json_or_file(name: str, raw: str) -> Any:
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


def parse_quota_windows(name: str, raw: str) -> dict[str, dict[str, int]]:
    """`{"backend": {"5h": 6000, "7d": 45000}, ...}`: request counts per rolling window
    (durations as in duration_seconds, counts positive whole numbers). Backend names are
    checked against the known backends by Config.validate."""
    value = parse_json_or_file(name, raw)
    if not isinstance(value, dict):
        raise ConfigError(name, 'expected an object such as {"coding-plan": {"5h": 6000}}')
    windows: dict[str, dict[str, int]] = {}
    for backend, table in value.items():
        if not isinstance(table, dict):
            raise ConfigError(name, f"backend {backend!r}: expected an object of windows")
        windows[backend] = {}
        for window, limit in table.items():
            try:
                duration_seconds(str(window))
            except ValueError as exc:
                raise ConfigError(name, f"backend {backend!r}, window {window!r}: {exc}") from None
            if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
                raise ConfigError(
                    name,
                    f"backend {backend!r}, window {window!r}: expected a positive whole "
                    f"number of requests, got {limit!r}",
                )
            windows[backend][str(window).strip().lower()] = limit
    return windows


def parse_aliases(name: str, raw: str) -> dict[str, dict[str, str]]:
    value = parse_json_or_file(name, raw)
    if not isinstance(value, dict) or not all(
        isinstance(table, dict)
        and all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in table.items())
        for table in value.values()
    ):
        raise ConfigError(name, 'expected {"<backend>": {"<alias>": "<upstream model>"}}')
    return {backend.strip().lower(): dict(table) for backend, table in value.items()}


MODEL_INFO_FIELDS = ("context_length", "max_output_tokens")


def parse_model_info(name: str, raw: str) -> dict[str, dict[str, dict[str, int]]]:
    """{"<backend>": {"<model>": {"context_length": N, "max_output_tokens": N}}}: either
    field may be left out; values are positive whole numbers of tokens."""
    value = parse_json_or_file(name, raw)
    shape = (
        'expected {"<backend>": {"<model>": {"context_length": 1000000, '
        '"max_output_tokens": 65536}}}'
    )
    if not isinstance(value, dict):
        raise ConfigError(name, shape)
    result: dict[str, dict[str, dict[str, int]]] = {}
    for backend, table in value.items():
        if not isinstance(table, dict):
            raise ConfigError(name, shape)
        models: dict[str, dict[str, int]] = {}
        for model, facts in table.items():
            if not isinstance(facts, dict) or not facts:
                raise ConfigError(name, f"{backend}/{model}: {shape}")
            for key, number in facts.items():
                if key not in MODEL_INFO_FIELDS:
                    raise ConfigError(
                        name,
                        f"{backend}/{model}: unknown field {key!r}; "
                        f"known: {', '.join(MODEL_INFO_FIELDS)}",
                    )
                if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                    raise ConfigError(name, f"{backend}/{model}: {key} must be a positive integer")
            models[str(model).strip()] = dict(facts)
        result[str(backend).strip().lower()] = models
    return result


def parse_routes(name: str, raw: str) -> dict[str, dict[str, Any]]:
    value = parse_json_or_file(name, raw)
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


def parse_model_map(name: str, raw: str) -> dict[str, str]:
    """`backend:model` for every vendor model name, or a JSON object of glob -> model."""
    text = raw.strip()
    if not text.startswith("{"):
        return {"*": parse_text(name, text)}
    value = parse_json_or_file(name, text)
    if not isinstance(value, dict) or not all(
        isinstance(v, str) and v.strip() for v in value.values()
    ):
        raise ConfigError(name, 'expected "backend:model" or {"claude-*": "backend:model"}')
    return {str(k): v.strip() for k, v in value.items()}


@dataclass(frozen=True)
class ProxyAddress:
    """An HTTP proxy's address and (URL-decoded) credentials."""

    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)


def split_credentials(url: str) -> tuple[str, str | None, str]:
    """(`scheme://` or "", the credentials as written or None, the rest) of a URL such
    as `http://user:password@host:port/path`. The credentials are what comes before the
    last `@` (a password may hold `#`, `?` or `/`). The one reading of a URL's
    credentials: the proxy settings, the secrets to hide, and the doctor's display."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        scheme, rest = "", url.strip()
    userinfo, at, hostpart = rest.rpartition("@")
    return (f"{scheme}{sep}", userinfo if at else None, hostpart)


def url_secrets(url: str) -> tuple[str, ...]:
    """The secret in a URL's credentials, as written and as sent (URL-decoded): its
    password, or a user name alone (which some proxies take as a token)."""
    userinfo = split_credentials(url)[1]
    if not userinfo:
        return ()
    secret = userinfo.partition(":")[2] or userinfo
    return tuple(dict.fromkeys((secret, unquote(secret))))


def split_proxy_url(url: str) -> ProxyAddress:
    """`[http://][user[:password]@]host[:port][/]`, split once (split_credentials); the
    port defaults to 80. ValueError messages never repeat any part of `url`."""
    prefix, userinfo, hostport = split_credentials(url)
    scheme = prefix[:-3] or "http"
    if scheme.lower() != "http":
        raise ValueError(
            f"only http:// proxies are supported (HTTPS goes through them), not {scheme}://"
        )
    hostport = hostport.split("/", 1)[0]
    if hostport.startswith("["):
        host, bracket, tail = hostport[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError("expected http://[ipv6]:port")
        port_text = tail[1:]
    else:
        host, _, port_text = hostport.partition(":")
        if ":" in port_text:
            raise ValueError("an IPv6 proxy address goes in brackets: http://[ipv6]:port")
    if not host:
        raise ValueError("expected http://host:port")
    if port_text and not (port_text.isdigit() and 1 <= int(port_text) <= 65535):
        raise ValueError("the proxy's port must be a number from 1 to 65535")
    username = password = None
    if userinfo is not None:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user)
        password = unquote(secret) if colon else None
    return ProxyAddress(host, int(port_text or 80), username, password)


def parse_proxy_url(name: str, raw: str) -> str:
    """`http://[user:password@]host[:port]`: an HTTP proxy for upstream calls."""
    value = raw.strip()
    if not value:
        return ""
    try:
        split_proxy_url(value)
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from None
    return value if "://" in value else f"http://{value}"


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
def parse_backend_switches(name: str, raw: str) -> dict[str, bool]:
    """`{"<backend>": true|false}` (JSON or a file): per-backend switches over defaults."""
    value = parse_json_or_file(name, raw)
    if not isinstance(value, dict) or not all(isinstance(v, bool) for v in value.values()):
        raise ConfigError(name, 'expected {"<backend>": true or false}')
    return {str(backend).strip().lower(): switch for backend, switch in value.items()}


PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "implicit_cache_read")


def _price_number(name: str, where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(name, f"{where} must be a number >= 0 (per million tokens)")
    return float(value)


def _price_tier(name: str, where: str, spec: Any, last: bool, flat: bool) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ConfigError(name, f"{where} must be an object")
    unknown = set(spec) - {*PRICE_FIELDS, *(("currency",) if flat else ("up_to",))}
    if unknown:
        raise ConfigError(name, f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    for needed in ("input", "output"):
        if needed not in spec:
            raise ConfigError(name, f"{where} needs `{needed}`")
    tier: dict[str, Any] = {
        field: _price_number(name, f"{where}.{field}", spec[field])
        for field in PRICE_FIELDS
        if spec.get(field) is not None
    }
    up_to = spec.get("up_to")
    if up_to is None and not last:
        raise ConfigError(name, f"{where} needs `up_to` (every tier but the last)")
    if up_to is not None and (isinstance(up_to, bool) or not isinstance(up_to, int) or up_to < 1):
        raise ConfigError(name, f"{where}.up_to must be a whole number of prompt tokens >= 1")
    tier["up_to"] = up_to
    return tier


def parse_prices(name: str, raw: str) -> dict[str, dict[str, dict[str, Any] | None]]:
    """MODEL_PRICES: `{"<backend>": {"<model>" or "*": price or null}}`, a price being
    `{"input", "output", "cache_read", "cache_write", "implicit_cache_read", "currency"}`
    in currency per million tokens, or `{"currency", "tiers": [{"up_to": N, ...}, ...]}`
    for prompt-length tiers (the last without `up_to`). Returns each price as
    `{"currency", "tiers": [...]}`; null (no price: cost unknown) stays None."""
    value = parse_json_or_file(name, raw)
    shape = '{"<backend>": {"<model>": {"input": 1.0, "output": 5.0, "currency": "USD"}}}'
    if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
        raise ConfigError(name, f"expected {shape}")
    result: dict[str, dict[str, dict[str, Any] | None]] = {}
    for backend, table in value.items():
        prices: dict[str, dict[str, Any] | None] = {}
        for model, spec in table.items():
            where = f"{backend}.{model}"
            if spec is None:
                prices[str(model)] = None
                continue
            if not isinstance(spec, dict):
                raise ConfigError(name, f"{where} must be an object or null")
            if "tiers" in spec and set(spec) - {"tiers", "currency"}:
                raise ConfigError(name, f"{where}: with `tiers`, prices go inside the tiers")
            currency = spec.get("currency", "USD")
            if not isinstance(currency, str) or not currency.strip():
                raise ConfigError(name, f"{where}.currency must be a currency code such as USD")
            raw_tiers = spec.get("tiers")
            if raw_tiers is None:
                tiers = [_price_tier(name, where, spec, last=True, flat=True)]
            else:
                if not isinstance(raw_tiers, list) or not raw_tiers:
                    raise ConfigError(name, f"{where}.tiers must be a non-empty list")
                tiers = [
                    _price_tier(
                        name, f"{where}.tiers[{i}]", t, last=i == len(raw_tiers) - 1, flat=False
                    )
                    for i, t in enumerate(raw_tiers)
                ]
                bounds = [t["up_to"] for t in tiers if t["up_to"] is not None]
                if bounds != sorted(set(bounds)):
                    raise ConfigError(name, f"{where}.tiers: `up_to` must grow from tier to tier")
            prices[str(model)] = {"currency": currency.strip().upper(), "tiers": tiers}
        result[str(backend).strip().lower()] = prices
    return result


@dataclass(frozen=True)
class LoopThresholds:
    """What counts as a loop (see LoopDetector). LOOP_DEFAULTS is the one place the
    defaults are written: the LOOP_* settings and the pipeline's guards start from it."""

    min_pattern: int = 100
    min_repeats: int = 4
    short_pattern: int = 20
    short_repeats: int = 12


LOOP_DEFAULTS = LoopThresholds()


def key_id(secret: str) -> str:
    """The stable, non-secret id of a key (a client key, an upstream key, a login's file):
    12 hex digits of its SHA-256. The ledger, logs and reports name keys by it."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]
