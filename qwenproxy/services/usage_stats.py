"""Reading the usage ledger: durations such as `24h`, percentiles, and per-group
summaries (requests, errors, tokens, p50/p95 latency and TTFT, tokens/s) of its rows."""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from qwenproxy.config_values import duration_seconds

GROUP_BY = ("model", "backend", "session", "key", "day")
MAX_SINCE_S = 3660 * 86400.0
# Time-series bucket widths the dashboard may use, smallest first.
_BUCKETS_S = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)

STAT_COLUMNS = (
    "started_at",
    "status",
    "backend",
    "upstream_model",
    "requested_model",
    "session_id",
    "client_key_id",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cached_tokens",
    "latency_ms",
    "ttft_ms",
    "tokens_per_s",
)


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `30m`, `24h` or `7d`, at most 3660 days; ValueError
    otherwise."""
    seconds = duration_seconds(text)
    if not seconds <= MAX_SINCE_S:
        raise ValueError(f"expected a positive duration of at most 3660d, got {text!r}")
    return seconds


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) of `values` with linear interpolation; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _utc_day(epoch_s: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, tz=datetime.timezone.utc).date().isoformat()


_GROUP_KEYS: dict[str, Callable[[Any], str]] = {
    "model": lambda row: row.upstream_model or row.requested_model or "-",
    "backend": lambda row: row.backend or "-",
    "session": lambda row: row.session_id or "-",
    "key": lambda row: row.client_key_id or "-",
    "day": lambda row: _utc_day(row.started_at),
}


def summarize(group: str, rows: Iterable[Any]) -> dict[str, Any]:
    """Requests, errors, token sums, p50/p95 latency and TTFT, mean tokens/s of `rows`."""
    rows = list(rows)
    latencies = [r.latency_ms for r in rows if r.latency_ms is not None]
    ttfts = [r.ttft_ms for r in rows if r.ttft_ms is not None]
    rates = [r.tokens_per_s for r in rows if r.tokens_per_s is not None]
    return {
        "group": group,
        "requests": len(rows),
        "errors": sum(1 for r in rows if r.status >= 400),
        "prompt_tokens": sum(r.prompt_tokens or 0 for r in rows),
        "completion_tokens": sum(r.completion_tokens or 0 for r in rows),
        "total_tokens": sum(
            r.total_tokens
            if r.total_tokens is not None
            else (r.prompt_tokens or 0) + (r.completion_tokens or 0)
            for r in rows
        ),
        "cached_tokens": sum(r.cached_tokens or 0 for r in rows),
        "latency_ms_p50": _round(percentile(latencies, 0.50)),
        "latency_ms_p95": _round(percentile(latencies, 0.95)),
        "ttft_ms_p50": _round(percentile(ttfts, 0.50)),
        "ttft_ms_p95": _round(percentile(ttfts, 0.95)),
        "tokens_per_s_avg": _round(sum(rates) / len(rates)) if rates else None,
    }


def grouped(rows: Sequence[Any], group_by: str | None) -> list[dict[str, Any]]:
    if group_by is None:
        return [summarize("all", rows)]
    key = _GROUP_KEYS[group_by]
    groups: dict[str, list[Any]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    result = [summarize(name, members) for name, members in groups.items()]
    if group_by == "day":
        result.sort(key=lambda s: s["group"])
    else:
        result.sort(key=lambda s: (-s["requests"], s["group"]))
    return result


def bucket_width(since_s: float, buckets: int) -> int:
    wanted = since_s / max(1, buckets)
    return next((b for b in _BUCKETS_S if b >= wanted), _BUCKETS_S[-1])
