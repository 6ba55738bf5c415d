"""Accounting and performance ledger: one `UsageRecord` per request, queued without I/O,
written in batches to `qp_usage` (with the aggregates' deltas, in one transaction) by a
background writer that also logs one line per request; queries for totals per group, time
series (from the aggregates, usage_aggregates.py), recent rows and exports (through the
started_at index).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from qwenproxy.services import usage_aggregates as agg
from qwenproxy.services.background import BackgroundLoop
from qwenproxy.services.store import Database, database_errors, describe_db_error
from qwenproxy.services.usage_records import (
    INSERT_SQL,
    LOG_FORMATS,
    RECORD_FIELDS,
    UsageRecord,
    human_log_line,
    json_log_line,
)
from qwenproxy.services.usage_stats import GROUP_BY, bucket_width, utc_day

log = logging.getLogger(__name__)
request_log = logging.getLogger("qwenproxy.requests")

DROP_WARNING_INTERVAL_S = 60.0
MAX_GROUPS = 1000  # groups one stats read returns at most (the busiest)
DASHBOARD_GROUPS = 20
READ_CACHE_S = 2.0
READ_CACHE_ENTRIES = 64


class UsageLedger:
    """Queues `UsageRecord`s in memory and writes them to `qp_usage` in batches.

    `record()` is safe on the request path: it neither blocks nor does I/O. When the queue
    is full the oldest row is dropped (and counted). Call `start()` once per process,
    `close()` at shutdown.
    """

    enabled = True

    def __init__(
        self,
        db: Database,
        clock: Callable[[], float] = time.time,
        queue_size: int = 10000,
        batch_size: int = 2000,
        flush_interval: float = 0.25,
        log_format: str = "human",
        read_cache_s: float = READ_CACHE_S,
    ) -> None:
        if queue_size < 1 or batch_size < 1:
            raise ValueError("queue_size and batch_size must be at least 1")
        if log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        self._db = db
        self._clock = clock
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._log_line = json_log_line if log_format == "json" else human_log_line
        self._queue: deque[UsageRecord] = deque()
        self._queue_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._writer = BackgroundLoop("qwenproxy-usage-writer")
        self._dropped = 0
        self._dropped_reported = 0
        self._drop_warned_at: float | None = None
        self._failed = 0
        self._written = 0
        self._read_cache_s = read_cache_s
        self._cache: dict[tuple[Any, ...], tuple[float, int, Any]] = {}
        self._read_locks: dict[tuple[Any, ...], threading.Lock] = {}
        self._generation = 0  # bumped by flush(): reads after it are fresh
        # Called with each batch before it is written; what they return (if not None) runs
        # with the cursor in the batch's transaction (the limit engine's hand-back).
        self.batch_hooks: list[Callable[[list[UsageRecord]], Callable[[Any], None] | None]] = []

    # --- the request path ----------------------------------------------------------------

    def record(self, rec: UsageRecord) -> None:
        """Queue `rec` for writing; never blocks, never does I/O."""
        with self._queue_lock:
            if len(self._queue) >= self._queue_size:
                self._queue.popleft()
                self._dropped += 1
            self._queue.append(rec)
            # The first row wakes an idle writer; a full batch wakes a gathering one.
            wake = len(self._queue) == 1 or len(self._queue) >= self._batch_size
        if wake:
            self._wake.set()

    @property
    def dropped(self) -> int:
        """Rows dropped (oldest first) because the queue was full."""
        return self._dropped

    @property
    def failed(self) -> int:
        """Rows lost because the database refused a batch."""
        return self._failed

    @property
    def written(self) -> int:
        return self._written

    @property
    def pending(self) -> int:
        return len(self._queue)

    # --- the writer ----------------------------------------------------------------------

    def start(self) -> None:
        """Start the background writer (a greenlet under gevent's patched threading)."""
        self._writer.start(self._run)

    def flush(self, timeout: float = 5.0) -> bool:
        """Write every queued row now; True when the queue is empty afterwards."""
        deadline = time.monotonic() + timeout
        if not self._write_lock.acquire(timeout=max(0.0, timeout)):
            return False
        try:
            return self._drain(deadline)
        finally:
            self._generation += 1
            self._write_lock.release()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the writer and write what is still queued."""
        self._writer.stop(timeout, wake=self._wake.set)
        self.flush(timeout)

    def _run(self) -> None:
        stopping = self._writer.stopping
        while not stopping.is_set():
            # Idle until a row arrives (Event.wait yields to other greenlets under gevent),
            # then let a batch gather for up to flush_interval before writing it.
            self._wake.wait()
            self._wake.clear()
            if not stopping.is_set():
                stopping.wait(self._flush_interval)
            try:
                with self._write_lock:
                    self._drain(None)
            except Exception:  # the writer must outlive any surprise
                log.exception("usage ledger writer error")

    def _drain(self, deadline: float | None) -> bool:
        """Write batches until the queue is empty (or the deadline passes). Holds the write
        lock, so batches reach the database in the order they were recorded."""
        try:
            while True:
                with self._queue_lock:
                    count = min(self._batch_size, len(self._queue))
                    batch = [self._queue.popleft() for _ in range(count)]
                if not batch:
                    return True
                self._write(batch)
                if deadline is not None and time.monotonic() >= deadline:
                    return not self._queue
                time.sleep(0)  # between batches, let other greenlets (or threads) run
        finally:
            self._warn_dropped()

    def _write(self, batch: list[UsageRecord]) -> None:
        written_at = self._clock()
        rows = [{**rec.as_row(), "written_at": written_at} for rec in batch]
        deltas = agg.Deltas()
        for i, rec in enumerate(batch):
            deltas.add(rec.aggregate_source())
            if i % 250 == 249:
                time.sleep(0)  # a large batch's arithmetic lets requests run between slices
        buckets = deltas.rows()
        insert = self._db.sql(INSERT_SQL)
        extras = [step for hook in self.batch_hooks if (step := hook(batch)) is not None]

        def store(conn: Any) -> None:
            cursor = conn.cursor()
            try:
                cursor.executemany(insert, rows)
                agg.upsert(cursor, buckets, not self._db.is_sqlite)
                for step in extras:
                    step(cursor)
            finally:
                cursor.close()
            conn.commit()

        try:
            self._db.offload(store)
            self._written += len(rows)
        except Exception as exc:  # a failing database must not stop accounting
            self._failed += len(rows)
            log.warning(
                "usage ledger: could not write %d row(s): %s", len(rows), describe_db_error(exc)
            )
        if request_log.isEnabledFor(logging.INFO):
            for rec in batch:
                request_log.info(self._log_line(rec))

    def _warn_dropped(self) -> None:
        unreported = self._dropped - self._dropped_reported
        if not unreported:
            return
        now = self._clock()
        if self._drop_warned_at is not None and now - self._drop_warned_at < (
            DROP_WARNING_INTERVAL_S
        ):
            return
        self._drop_warned_at = now
        self._dropped_reported = self._dropped
        log.warning(
            "usage ledger queue full (%d rows): dropped %d oldest row(s), %d in total",
            self._queue_size,
            unreported,
            self._dropped,
        )

    # --- queries -------------------------------------------------------------------------

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
        usage_aggregates.window; whole hours by session and key); `group_by` is None (one
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
        first = math.floor((now - since_s) / width) * width
        count = math.floor((now - first) / width) + 1
        points = [agg.empty() for _ in range(count)]
        # Only resolutions that nest in the series' width, so each bucket falls in one point.
        levels = [level for level in agg.RESOLUTIONS if width % level[1] == 0]
        for row in self._buckets(agg.cover(lo, hi, levels)):
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


class NullLedger:
    """The ledger when DISABLE_ACCOUNTING=true: records nothing, reports nothing."""

    enabled = False
    dropped = 0
    failed = 0
    written = 0
    pending = 0

    def record(self, rec: UsageRecord) -> None:
        pass

    def start(self) -> None:
        pass

    def flush(self, timeout: float = 5.0) -> bool:
        return True

    def close(self, timeout: float = 5.0) -> None:
        pass

    def stats(self, since_s: float, group_by: str | None = None) -> list[dict[str, Any]]:
        if group_by is not None and group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}")
        return []

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        return []

    def export(self, since_s: float, page: int = 5000) -> Iterator[dict[str, Any]]:
        return iter(())

    def overview(self, since_s: float, buckets: int = 48, recent: int = 20) -> dict[str, Any]:
        return {
            "enabled": False,
            "since_s": since_s,
            "now": time.time(),
            "bucket_s": bucket_width(since_s, buckets),
            "total": agg.summary("all", agg.empty()),
            "series": [],
            "by_model": [],
            "by_backend": [],
            "recent": [],
            "dropped": 0,
        }
