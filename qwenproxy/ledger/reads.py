"""The usage ledger's reads: totals per group and time series from the aggregates
(ledger/aggregates.py), the latest rows and exports through the started_at index, each read
off the hub, bounded, and shared by identical reads within READ_CACHE_S. `UsageLedger`
(writer.py) is the writer that has them.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from qwenproxy.ledger import aggregates as agg
from qwenproxy.ledger.records import RECORD_FIELDS
from qwenproxy.ledger.stats import GROUP_BY, bucket_width, utc_day
from qwenproxy.store import Database, database_errors

MAX_GROUPS = 1000  # groups one stats read returns at most (the busiest)
DASHBOARD_GROUPS = 20
READ_CACHE_S = 2.0
READ_CACHE_ENTRIES = 64


class LedgerReads:
    """The reads of a ledger held in `self._db` (its clock `self._clock`); the cache's
    state is set up by `_init_reads`."""

    _db: Database
    _clock: Callable[[], float]

    def _init_reads(self, read_cache_s: float) -> None:
        self._read_cache_s = read_cache_s
        self._cache: dict[tuple[Any, ...], tuple[float, int, Any]] = {}
        self._read_locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._generation = 0  # bumped by flush(): reads after it are fresh


    def _fetch(self, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """A read of the ledger, off the hub (Database.query), bounded in time."""
        with database_errors("reading the usage ledger", code="usage_database_unavailable"):
            return self._db.query(sql, params)

    def _cached(self, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """`compute()`, shared by identical reads within READ_CACHE_S (and waited for by
        the ones that arrive while it runs): however many dashboards refresh, each window
        costs one read of the aggregates. `flush()` makes the next reads fresh."""

        def fresh() -> tuple[float, int, Any] | None:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > time.monotonic() and hit[1] == self._generation:
                return hit
            return None

        hit = fresh()
        if hit is not None:
            return hit[2]
        lock = self._read_locks.setdefault(key, threading.Lock())
        with lock:
            hit = fresh()  # the read that held the lock may have filled it
            if hit is not None:
                return hit[2]
            generation = self._generation
            value = compute()
            if len(self._cache) >= READ_CACHE_ENTRIES:
                self._cache.clear()
                self._read_locks = {key: lock}
            self._cache[key] = (time.monotonic() + self._read_cache_s, generation, value)
            return value

    def _groups(self, dim: str, lo: int, hi: int, limit: int) -> list[dict[str, Any]]:
        sql, params = agg.grouped_sql(agg.parts_for(dim, lo, hi))
        rows = self._fetch(sql, {**params, "dim": dim, "limit": limit})
        return [agg.summary(row[0] if dim != "all" else "all", row[1:]) for row in rows]

    def _buckets(self, parts: list[Any]) -> list[tuple[Any, ...]]:
        """(bucket start, counters...) of the `all` series in `parts`."""
        return self._fetch(*agg.series_sql(parts))

    def stats(self, since_s: float, group_by: str | None = None) -> list[dict[str, Any]]:
        """One summary per group of the last `since_s` seconds (whole minutes, see
        aggregates.window; whole hours by session and key); `group_by` is None (one
        "all" row) or one of GROUP_BY (`day` is the UTC date). At most MAX_GROUPS groups,
        the busiest first."""
        if group_by is not None and group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}")
        return self._cached(("stats", since_s, group_by), lambda: self._stats(since_s, group_by))

    def _stats(self, since_s: float, group_by: str | None) -> list[dict[str, Any]]:
        lo, hi = agg.window(self._clock(), since_s)
        if group_by is None:
            return self._groups("all", lo, hi, 1) or [agg.summary("all", agg.empty())]
        if group_by != "day":
            return self._groups(agg.DIM_OF_GROUP[group_by], lo, hi, MAX_GROUPS)
        days: dict[str, list[Any]] = {}
        for row in self._buckets(agg.cover(lo, hi)):
            agg.add_into(days.setdefault(utc_day(row[0]), agg.empty()), row[1:])
        return [agg.summary(day, counters) for day, counters in sorted(days.items())]

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest `limit` rows, newest first (through the started_at index)."""
        rows = self._fetch(RECENT_SQL, {"limit": limit})
        return [_plain_row(row) for row in rows]

    def overview(self, since_s: float, buckets: int = 48, recent: int = 20) -> dict[str, Any]:
        """What the dashboard shows: totals, a time series, per-model and per-backend
        summaries and the latest rows: four bounded reads of the aggregates and the index."""
        return self._cached(
            ("overview", since_s, buckets, recent),
            lambda: self._overview(since_s, buckets, recent),
        )

    def _overview(self, since_s: float, buckets: int, recent: int) -> dict[str, Any]:
        now = self._clock()
        lo, hi = agg.window(now, since_s)
        width = bucket_width(since_s, buckets)
        first, count = series_span(now, since_s, width)
        # Only resolutions that nest in the series' width, so each bucket falls in one point.
        levels = [level for level in agg.RESOLUTIONS if width % level[1] == 0]
        total, series = series_of(self._buckets(agg.cover(lo, hi, levels)), first, width, count)
        return {
            "enabled": True,
            "since_s": since_s,
            "now": now,
            "bucket_s": width,
            "total": agg.summary("all", total),
            "series": series,
            "by_model": self._groups("model", lo, hi, DASHBOARD_GROUPS),
            "by_backend": self._groups("backend", lo, hi, DASHBOARD_GROUPS),
            "recent": self.recent(recent),
            "dropped": self._dropped,
        }

    def export(self, since_s: float, page: int = 5000) -> Iterator[dict[str, Any]]:
        """Every raw row of the last `since_s` seconds, oldest first, read in pages through
        the started_at index (so memory stays at one page whatever the period)."""
        after = (self._clock() - since_s, "")
        while True:
            rows = self._fetch(EXPORT_SQL, {"started": after[0], "id": after[1], "limit": page})
            for row in rows:
                yield _plain_row(row)
            if len(rows) < page:
                return
            after = (rows[-1][1], rows[-1][0])  # (started_at, id) of the page's last row


def series_span(now: float, since_s: float, width: float) -> tuple[float, int]:
    """(start of the first point, number of points) of a series of `width`-second points
    over the last `since_s` seconds."""
    first = math.floor((now - since_s) / width) * width
    return first, math.floor((now - first) / width) + 1


def series_of(
    rows: Iterable[Sequence[Any]], first: float, width: float, count: int
) -> tuple[list[Any], list[dict[str, Any]]]:
    """(the counters of them all, the points of the dashboard's series) of bucket `rows`
    (bucket start, counters...) summed into `count` points of `width` seconds from `first`."""
    points = [agg.empty() for _ in range(count)]
    for row in rows:
        index = min(count - 1, max(0, int((row[0] - first) // width)))
        agg.add_into(points[index], row[1:])
    total = agg.empty()
    for point in points:
        agg.add_into(total, point)
    series = [
        {
            "start": first + i * width,
            "requests": int(point[agg.REQUESTS]),
            "errors": int(point[agg.ERRORS]),
            "prompt_tokens": int(point[agg.PROMPT]),
            "completion_tokens": int(point[agg.COMPLETION]),
        }
        for i, point in enumerate(points)
    ]
    return total, series


_SELECTED = ", ".join(RECORD_FIELDS)
RECENT_SQL = f"SELECT {_SELECTED} FROM qp_usage ORDER BY started_at DESC, id DESC LIMIT :limit"
EXPORT_SQL = (
    f"SELECT {_SELECTED} FROM qp_usage WHERE started_at > :started "
    "OR (started_at = :started AND id > :id) ORDER BY started_at, id LIMIT :limit"
)
_BOOLEAN_FIELDS = ("stream", "loop_detected", "command_only")


def _plain_row(row: Sequence[Any]) -> dict[str, Any]:
    values = dict(zip(RECORD_FIELDS, row, strict=True))
    for name in _BOOLEAN_FIELDS:
        values[name] = bool(values[name])
    return values
