"""One client key's usage, for the key itself (its `/usage/stats`, `/usage/recent` and
dashboard) and for `keys show`: every count comes from the ledger aggregates' `key`
dimension (hourly and daily buckets, so windows start and end on whole hours), never from a
scan of raw rows; a key's latest requests are looked for among the newest RECENT_SCAN rows
of the ledger (one bounded read through the started_at index).
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable
from typing import Any

from qwenproxy.ledger import aggregates as agg
from qwenproxy.ledger.reads import _plain_row, series_of, series_span
from qwenproxy.ledger.records import RECORD_FIELDS
from qwenproxy.ledger.stats import bucket_width
from qwenproxy.store import Database, database_errors

RECENT_SCAN = 10000
HOUR = 3600

_SELECTED = ", ".join(RECORD_FIELDS)
_RECENT_SQL = (
    f"SELECT {_SELECTED} FROM (SELECT {_SELECTED} FROM qp_usage "
    "ORDER BY started_at DESC, id DESC LIMIT :scan) AS latest "
    "WHERE client_key_id = :key ORDER BY started_at DESC, id DESC LIMIT :limit"
)


def day_start(now: float) -> float:
    """The start of the UTC day holding `now`."""
    return math.floor(now / 86400) * 86400.0


def month_start(now: float) -> float:
    """The start of the UTC calendar month holding `now`."""
    day = datetime.datetime.fromtimestamp(now, tz=datetime.timezone.utc)
    return day.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def next_month(now: float) -> float:
    day = datetime.datetime.fromtimestamp(month_start(now), tz=datetime.timezone.utc)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return day.replace(year=year, month=month).timestamp()


class KeyUsage:
    """Reads of one key's rows in the aggregates (bounded: the buckets of one window)."""

    def __init__(
        self, db: Database, clock: Callable[[], float] = time.time, enabled: bool = True
    ) -> None:
        self._db = db
        self._clock = clock
        self.enabled = enabled

    def _fetch(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with database_errors("reading the usage ledger", code="usage_database_unavailable"):
            return self._db.query(sql, params)

    def _buckets(self, key_id: str, lo: float, hi: float) -> list[tuple[Any, ...]]:
        """(bucket start, counters...) of the key's buckets covering [lo, hi) to the hour."""
        parts = agg.parts_for("key", int(lo), int(hi))
        sql, params = agg.ranged_rows(parts, f"bucket, {', '.join(agg.COUNTERS)}", one_group=True)
        if not self.enabled:
            return []
        return self._fetch(sql, {**params, "dim": "key", "grp": key_id})

    def totals(self, key_id: str, lo: float, hi: float) -> dict[str, Any]:
        total = agg.empty()
        for row in self._buckets(key_id, lo, hi):
            agg.add_into(total, row[1:])
        return agg.summary(key_id, total)

    def stats(self, key_id: str, since_s: float) -> list[dict[str, Any]]:
        """The key's one stats row over the last `since_s` seconds (whole hours)."""
        lo, hi = agg.window(self._clock(), since_s)
        return [self.totals(key_id, lo, hi)] if self.enabled else []

    def budget_usage(self, key_id: str) -> dict[str, Any]:
        """What the budgets count: today's requests, this month's tokens and cost (UTC)."""
        now = self._clock()
        hi = int(now // HOUR) * HOUR + HOUR
        today = self.totals(key_id, day_start(now), hi)
        month = self.totals(key_id, month_start(now), hi)
        return {
            "requests_today": today["requests"],
            "tokens_this_month": month["total_tokens"],
            "cost_this_month": month["cost"] or 0.0,
            "day_ends_at": day_start(now) + 86400,
            "month_ends_at": next_month(now),
        }

    def recent(self, key_id: str, limit: int) -> list[dict[str, Any]]:
        if not self.enabled:
            return []
        rows = self._fetch(_RECENT_SQL, {"scan": RECENT_SCAN, "key": key_id, "limit": limit})
        return [_plain_row(row) for row in rows]

    def overview(self, key_id: str, since_s: float, recent: int = 20) -> dict[str, Any]:
        """The dashboard's data for one key: totals, an hourly (or coarser) series and its
        latest requests; no per-model or per-backend panels (the aggregates do not split a
        key's buckets by model)."""
        now = self._clock()
        width = max(HOUR, -(-bucket_width(since_s, 48) // HOUR) * HOUR)
        first, count = series_span(now, since_s, width)
        rows = self._buckets(key_id, first, first + count * width)
        total, series = series_of(rows, first, width, count)
        return {
            "enabled": self.enabled,
            "since_s": since_s,
            "now": now,
            "bucket_s": width,
            "total": agg.summary(key_id, total),
            "series": series,
            "by_model": [],
            "by_backend": [],
            "recent": self.recent(key_id, recent),
            "dropped": 0,
        }
