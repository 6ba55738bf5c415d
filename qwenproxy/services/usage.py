"""Accounting and performance ledger: one `UsageRecord` per request, queued without I/O,
written in batches to `qp_usage` by a background writer that also logs one line per
request; queries for totals per group, time series and recent rows (the arithmetic is in
usage_stats.py).
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import orjson
import sqlalchemy as sa

from qwenproxy.services.prompt_cache import cache_counts
from qwenproxy.services.store import Database, database_errors, describe_db_error, metadata
from qwenproxy.services.usage_stats import (
    GROUP_BY,
    STAT_COLUMNS,
    bucket_width,
    grouped,
    summarize,
)

log = logging.getLogger(__name__)
request_log = logging.getLogger("qwenproxy.requests")

LOG_FORMATS = ("human", "json")
DROP_WARNING_INTERVAL_S = 60.0


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True, kw_only=True)
class UsageRecord:
    """What one request cost and how fast it was. No message content, no secrets:
    `client_key_id` is the short hash from `ClientAccess`, never a key."""

    id: str = field(default_factory=_new_id)
    started_at: float
    session_id: str | None = None
    client_key_id: str | None = None
    backend: str = ""
    upstream_model: str = ""
    requested_model: str = ""
    stream: bool = False
    status: int = 200
    error_code: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None  # read from the prompt cache (part of prompt_tokens)
    cache_write_tokens: int | None = None  # written to the prompt cache (part of prompt_tokens)
    cost: float | None = None  # in `currency`; None when a price or the counts are unknown
    currency: str | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    upstream_latency_ms: float | None = None
    tokens_per_s: float | None = None
    failover_attempts: int = 0
    loop_detected: bool = False
    command_only: bool = False

    def apply_usage(self, usage: Mapping[str, Any] | None) -> None:
        """Copy token counts from an OpenAI `usage` object (missing values stay None)."""
        if not usage:
            return
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, value)
        cached, written = cache_counts(usage)
        if cached is not None:
            self.cached_tokens = cached
        if written is not None:
            self.cache_write_tokens = written

    def as_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RECORD_FIELDS}


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(UsageRecord))


def tokens_per_second(completion_tokens: int | None, generation_s: float | None) -> float | None:
    """Completion tokens over generation time (first token to last); None if unknown."""
    if not completion_tokens or not generation_s or generation_s <= 0:
        return None
    return completion_tokens / generation_s


usage_table = sa.Table(
    "qp_usage",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("session_id", sa.Text),
    sa.Column("client_key_id", sa.String(64)),
    sa.Column("backend", sa.Text, nullable=False),
    sa.Column("upstream_model", sa.Text, nullable=False),
    sa.Column("requested_model", sa.Text, nullable=False),
    sa.Column("stream", sa.Boolean, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("error_code", sa.Text),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("total_tokens", sa.Integer),
    sa.Column("cached_tokens", sa.Integer),
    sa.Column("cache_write_tokens", sa.Integer),
    sa.Column("cost", sa.Float),
    sa.Column("currency", sa.String(8)),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("ttft_ms", sa.Float),
    sa.Column("upstream_latency_ms", sa.Float),
    sa.Column("tokens_per_s", sa.Float),
    sa.Column("failover_attempts", sa.Integer, nullable=False),
    sa.Column("loop_detected", sa.Boolean, nullable=False),
    sa.Column("command_only", sa.Boolean, nullable=False),
    sa.Index("ix_qp_usage_started_at", "started_at"),
)

def _log_value(value: Any) -> str:
    """One whitespace-free token: client-chosen names must not forge log lines."""
    if value is None or value == "":
        return "-"
    text = str(value)[:200]
    return "".join(c if c.isprintable() and not c.isspace() else "_" for c in text)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"


def human_log_line(rec: UsageRecord) -> str:
    line = (
        f"req {rec.id[:8]} session={_log_value(rec.session_id)} "
        f"client={_log_value(rec.client_key_id)} backend={_log_value(rec.backend)} "
        f"model={_log_value(rec.upstream_model or rec.requested_model)} status={rec.status} "
        f"tokens={rec.prompt_tokens or 0}/{rec.completion_tokens or 0} "
        f"latency={_ms(rec.latency_ms)} ttft={_ms(rec.ttft_ms)}"
    )
    extras = []
    if rec.stream:
        extras.append("stream")
    if rec.tokens_per_s is not None:
        extras.append(f"tps={rec.tokens_per_s:.1f}")
    if rec.error_code:
        extras.append(f"error={_log_value(rec.error_code)}")
    if rec.failover_attempts:
        extras.append(f"failovers={rec.failover_attempts}")
    if rec.loop_detected:
        extras.append("loop_detected")
    if rec.command_only:
        extras.append("command_only")
    return " ".join([line, *extras])


def json_log_line(rec: UsageRecord) -> str:
    return orjson.dumps({"event": "request", **rec.as_row()}).decode()


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
        batch_size: int = 500,
        flush_interval: float = 0.25,
        log_format: str = "human",
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
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._dropped = 0
        self._dropped_reported = 0
        self._drop_warned_at: float | None = None
        self._failed = 0
        self._written = 0

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
        if self._thread is not None and self._thread.is_alive():
            return
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._run, name="qwenproxy-usage-writer", daemon=True
        )
        self._thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Write every queued row now; True when the queue is empty afterwards."""
        deadline = time.monotonic() + timeout
        if not self._write_lock.acquire(timeout=max(0.0, timeout)):
            return False
        try:
            return self._drain(deadline)
        finally:
            self._write_lock.release()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the writer and write what is still queued."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.flush(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            # Idle until a row arrives (Event.wait yields to other greenlets under gevent),
            # then let a batch gather for up to flush_interval before writing it.
            self._wake.wait()
            self._wake.clear()
            if not self._stopping.is_set():
                self._stopping.wait(self._flush_interval)
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
        rows = [rec.as_row() for rec in batch]
        try:
            with self._db.engine.begin() as conn:
                conn.execute(usage_table.insert(), rows)
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

    def _rows_since(self, since_s: float) -> list[Any]:
        cutoff = self._clock() - since_s
        columns = [usage_table.c[name] for name in STAT_COLUMNS]
        query = sa.select(*columns).where(usage_table.c.started_at >= cutoff)
        return self._query(query)

    def _query(self, query: sa.Select) -> list[Any]:
        with database_errors("reading the usage ledger", code="usage_database_unavailable"):
            with self._db.engine.connect() as conn:
                return list(conn.execute(query))

    def stats(self, since_s: float, group_by: str | None = None) -> list[dict[str, Any]]:
        """One summary per group of the rows of the last `since_s` seconds; `group_by` is
        None (one "all" row) or one of GROUP_BY (`day` is the UTC date)."""
        if group_by is not None and group_by not in GROUP_BY:
            raise ValueError(f"group_by must be one of {', '.join(GROUP_BY)}")
        return grouped(self._rows_since(since_s), group_by)

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest `limit` rows, newest first."""
        query = (
            sa.select(usage_table)
            .order_by(usage_table.c.started_at.desc(), usage_table.c.id.desc())
            .limit(limit)
        )
        return [_plain_row(row) for row in self._query(query)]

    def overview(self, since_s: float, buckets: int = 48, recent: int = 20) -> dict[str, Any]:
        """What the dashboard shows: totals, a time series, per-model and per-backend
        summaries and the latest rows, from one scan of the period."""
        rows = self._rows_since(since_s)
        now = self._clock()
        width = bucket_width(since_s, buckets)
        first = math.floor((now - since_s) / width) * width
        count = math.floor((now - first) / width) + 1
        series = [
            {
                "start": first + i * width,
                "requests": 0,
                "errors": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
            }
            for i in range(count)
        ]
        for row in rows:
            index = min(count - 1, max(0, int((row.started_at - first) // width)))
            point = series[index]
            point["requests"] += 1
            point["errors"] += row.status >= 400
            point["prompt_tokens"] += row.prompt_tokens or 0
            point["completion_tokens"] += row.completion_tokens or 0
        return {
            "enabled": True,
            "since_s": since_s,
            "now": now,
            "bucket_s": width,
            "total": summarize("all", rows),
            "series": series,
            "by_model": grouped(rows, "model"),
            "by_backend": grouped(rows, "backend"),
            "recent": self.recent(recent),
            "dropped": self._dropped,
        }


def _plain_row(row: Any) -> dict[str, Any]:
    values = dict(row._mapping)
    for name in ("stream", "loop_detected", "command_only"):
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

    def overview(self, since_s: float, buckets: int = 48, recent: int = 20) -> dict[str, Any]:
        return {
            "enabled": False,
            "since_s": since_s,
            "now": time.time(),
            "bucket_s": bucket_width(since_s, buckets),
            "total": summarize("all", []),
            "series": [],
            "by_model": [],
            "by_backend": [],
            "recent": [],
            "dropped": 0,
        }
