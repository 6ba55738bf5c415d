"""Accounting and performance ledger: one `UsageRecord` per request, queued without I/O,
written in batches to `qp_usage` (with the aggregates' deltas, in one transaction) by a
background writer that also logs one line per request; queries for totals per group, time
series (from the aggregates, ledger/aggregates.py), recent rows and exports (through the
started_at index).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from qwenproxy.background import BackgroundLoop
from qwenproxy.ledger import aggregates as agg
from qwenproxy.ledger.reads import READ_CACHE_S, LedgerReads
from qwenproxy.ledger.records import (
    INSERT_SQL,
    LOG_FORMATS,
    UsageRecord,
    human_log_line,
    json_log_line,
)
from qwenproxy.ledger.stats import GROUP_BY, bucket_width
from qwenproxy.store import Database, describe_db_error

log = logging.getLogger(__name__)
request_log = logging.getLogger("qwenproxy.requests")

DROP_WARNING_INTERVAL_S = 60.0


class UsageLedger(LedgerReads):
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
        self._init_reads(read_cache_s)
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
