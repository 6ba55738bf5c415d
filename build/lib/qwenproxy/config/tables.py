"""The settings that are tables (JSON, or a path to a JSON file): model aliases, model facts,
failover routes, the vendor model map, per-backend switches, prices and quota windows, each
checked whole with an error that names the variable and the place in the table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qwenproxy.config.values import ConfigError, duration_seconds, parse_text


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
