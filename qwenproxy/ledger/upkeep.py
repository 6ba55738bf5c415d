"""The ledger's background upkeep: builds the aggregates once from the rows of a ledger
that predates them (in chunks, resumable, one instance at a time), and deletes raw rows
and minute buckets older than LEDGER_RETENTION in small batches. Hour and day buckets are
kept. Nothing here runs on the request path.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import sqlalchemy as sa

from qwenproxy.background import BackgroundLoop
from qwenproxy.ledger import aggregates as agg
from qwenproxy.store import Database, describe_db_error, metadata

log = logging.getLogger(__name__)

meta_table = sa.Table(
    "qp_ledger_meta",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

STATE = "aggregates"
CHUNK_ROWS = 5000  # raw rows read per backfill step
DELETE_BATCH = 1000  # raw rows deleted per statement
LEASE_S = 60.0  # a backfill owner that has not advanced for this long is replaced
INTERVAL_S = 60.0
FAR = 1e18  # beyond any epoch second

_SOURCE = ", ".join(agg.SOURCE_COLUMNS)
_STATE_SQL = "SELECT value FROM qp_ledger_meta WHERE name = :name"
_INSERT_STATE_SQL = "INSERT INTO qp_ledger_meta (name, value) VALUES (:name, :value)"
_ADVANCE_SQL = "UPDATE qp_ledger_meta SET value = :new WHERE name = :name AND value = :old"
_ANY_OLD_SQL = "SELECT 1 FROM qp_usage WHERE written_at IS NULL LIMIT 1"
_COUNT_OLD_SQL = "SELECT COUNT(*) FROM qp_usage WHERE written_at IS NULL"
_BOUNDARY_SQL = (
    "SELECT started_at FROM qp_usage WHERE started_at >= :cursor "
    "ORDER BY started_at LIMIT 1 OFFSET :offset"
)
_NEXT_SQL = "SELECT MIN(started_at) FROM qp_usage WHERE started_at > :cursor"
_CHUNK_SQL = (
    f"SELECT {_SOURCE} FROM qp_usage WHERE started_at >= :cursor AND started_at < :end "
    "AND written_at IS NULL"
)
_DELETE_ROWS_SQL = (
    "DELETE FROM qp_usage WHERE id IN (SELECT id FROM qp_usage WHERE started_at < :cutoff "
    "ORDER BY started_at LIMIT :limit)"
)
_OLDEST_MINUTE_SQL = "SELECT MIN(bucket) FROM qp_usage_agg WHERE dim = 'all' AND res = 'm'"
_DELETE_MINUTES_SQL = (
    "DELETE FROM qp_usage_agg WHERE dim = :dim AND res = 'm' AND bucket >= :first AND bucket < :end"
)


class LedgerUpkeep:
    """Call `start()` once per process (a daemon greenlet under gevent); tests call
    `backfill_step()` and `expire()` directly. `retention_s` None keeps raw rows forever."""

    def __init__(
        self,
        db: Database,
        retention_s: float | None,
        clock: Callable[[], float] = time.time,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self._db = db
        self._retention_s = retention_s
        self._clock = clock
        self._interval_s = interval_s
        self._owner = uuid.uuid4().hex
        self._loop_runner = BackgroundLoop("qwenproxy-ledger-upkeep")

    # --- state -----------------------------------------------------------------------------

    def _fetch_one(self, sql: str, **params: Any) -> Any:
        rows = self._db.query(sql, params)
        return rows[0][0] if rows else None

    def _load(self) -> tuple[str | None, dict[str, Any]]:
        raw = self._fetch_one(_STATE_SQL, name=STATE)
        return raw, ({} if raw is None else orjson.loads(raw))

    def state(self) -> dict[str, Any]:
        """`{"state": "ready"}`, or `{"state": "building", "done": n, "total": m}` while the
        aggregates are being built from older rows; `{"state": "unknown"}` before the first
        check."""
        try:
            _, state = self._load()
        except sa.exc.SQLAlchemyError:
            return {"state": "unknown"}
        if not state:
            return {"state": "unknown"}
        return {k: state[k] for k in ("state", "done", "total") if k in state}

    def prepare(self) -> dict[str, Any]:
        """Write the first state: `building` when the ledger holds rows from before the
        aggregates, else `ready`. Another instance may win the insert; its state stands."""
        raw, state = self._load()
        if raw is not None:
            return state
        if self._fetch_one(_ANY_OLD_SQL) is None:
            state = {"state": "ready"}
        else:
            total = int(self._fetch_one(_COUNT_OLD_SQL) or 0)
            state = {"state": "building", "cursor": -FAR, "done": 0, "total": total}
            log.info("usage ledger: building the aggregates from %d earlier row(s)", total)
        try:
            self._execute(_INSERT_STATE_SQL, name=STATE, value=orjson.dumps(state).decode())
        except sa.exc.IntegrityError:
            _, state = self._load()
        return state

    # --- building the aggregates -------------------------------------------------------------

    def backfill_step(self, chunk: int = CHUNK_ROWS) -> bool:
        """Add one chunk of older rows to the aggregates; True while more remain. The chunk
        and the state's new cursor commit together, and only if the cursor is still where
        this step read it, so each row is added exactly once however many instances run."""
        raw, state = self._load()
        if raw is None:
            self.prepare()
            raw, state = self._load()
        if state.get("state") != "building":
            return False
        now = self._clock()
        owner, seen_at = state.get("owner"), state.get("at", 0.0)
        if owner not in (None, self._owner) and now - seen_at < LEASE_S:
            return False  # another instance is building: look again at the next pass
        cursor = state["cursor"]
        end = self._fetch_one(_BOUNDARY_SQL, cursor=cursor, offset=chunk)
        if end is not None and end <= cursor:  # more than a chunk share one start time
            end = self._fetch_one(_NEXT_SQL, cursor=cursor)
        finished = end is None
        end = FAR if finished else end
        rows = self._chunk(cursor, end)
        deltas = agg.Deltas()
        for i, row in enumerate(rows):
            deltas.add(row)
            if i % 500 == 499:
                time.sleep(0)  # let requests run between slices of the arithmetic
        new_state = {
            "state": "ready" if finished else "building",
            "cursor": end,
            "done": state.get("done", 0) + len(rows),
            "total": state.get("total", 0),
            "owner": self._owner,
            "at": now,
        }
        if self._commit_chunk(raw, new_state, deltas.rows()) and finished:
            log.info("usage ledger: aggregates built from %d earlier row(s)", new_state["done"])
        return not finished

    def _chunk(self, cursor: float, end: float) -> list[tuple[Any, ...]]:
        return self._db.query(_CHUNK_SQL, {"cursor": cursor, "end": end})

    def _commit_chunk(
        self, old: str | None, state: dict[str, Any], buckets: list[tuple[Any, ...]]
    ) -> bool:
        advance = self._db.sql(_ADVANCE_SQL)
        params = {"name": STATE, "old": old, "new": orjson.dumps(state).decode()}
        postgresql = not self._db.is_sqlite

        def work(conn: Any) -> bool:
            cursor = conn.cursor()
            try:
                cursor.execute(advance, params)
                if cursor.rowcount != 1:  # another instance moved the cursor first
                    conn.rollback()
                    return False
                agg.upsert(cursor, buckets, postgresql)
                conn.commit()
                return True
            finally:
                cursor.close()

        return self._db.offload(work)

    # --- retention ------------------------------------------------------------------------

    def expire(self, max_batches: int = 50) -> int:
        """Delete raw rows (and minute buckets) older than the retention, a batch at a
        time; rows the backfill has not reached yet are kept. Returns raw rows deleted."""
        if self._retention_s is None:
            return 0
        cutoff = self._clock() - self._retention_s
        _, state = self._load()
        if state.get("state") != "ready":
            cutoff = min(cutoff, state.get("cursor", -FAR))
        deleted = 0
        for _ in range(max_batches):
            count = self._execute(_DELETE_ROWS_SQL, cutoff=cutoff, limit=DELETE_BATCH)
            deleted += count
            if count < DELETE_BATCH:
                break
            time.sleep(0.01)
        oldest = self._fetch_one(_OLDEST_MINUTE_SQL)
        minute_cutoff = int(cutoff // 60) * 60
        if oldest is not None:
            first = int(oldest)
            for _ in range(max_batches):  # an hour of minute buckets per statement
                if first >= minute_cutoff:
                    break
                end = min(first + 3600, minute_cutoff)
                for dim in agg.DIMS:
                    self._execute(_DELETE_MINUTES_SQL, dim=dim, first=first, end=end)
                first = end
        if deleted:
            log.info("usage ledger: deleted %d row(s) older than the retention", deleted)
        return deleted

    def _execute(self, sql: str, **params: Any) -> int:
        return self._db.execute(sql, params)

    # --- the background loop ----------------------------------------------------------------

    def start(self) -> None:
        self._loop_runner.start(self._loop)

    def close(self, timeout: float = 5.0) -> None:
        self._loop_runner.stop(timeout)

    def _loop(self) -> None:
        stopping = self._loop_runner.stopping
        while not stopping.is_set():
            try:
                while self.backfill_step() and not stopping.is_set():
                    stopping.wait(0.01)
                self.expire()
            except Exception as exc:  # the loop outlives a database that is away
                log.warning("usage ledger upkeep: %s", describe_db_error(exc))
            stopping.wait(self._interval_s)
