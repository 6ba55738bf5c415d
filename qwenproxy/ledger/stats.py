"""Reading the usage ledger: the periods (`24h`), groups, days and time-series widths its
queries take (the summaries themselves are read from ledger/aggregates.py)."""

from __future__ import annotations

import datetime

from qwenproxy.config.values import duration_seconds

GROUP_BY = ("model", "backend", "session", "key", "day")
MAX_SINCE_S = 3660 * 86400.0
# Time-series bucket widths the dashboard may use, smallest first.
_BUCKETS_S = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `30m`, `24h` or `7d`, at most 3660 days; ValueError
    otherwise."""
    seconds = duration_seconds(text)
    if not seconds <= MAX_SINCE_S:
        raise ValueError(f"expected a positive duration of at most 3660d, got {text!r}")
    return seconds


def utc_day(epoch_s: float) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, tz=datetime.timezone.utc).date().isoformat()


def bucket_width(since_s: float, buckets: int) -> int:
    wanted = since_s / max(1, buckets)
    return next((b for b in _BUCKETS_S if b >= wanted), _BUCKETS_S[-1])
