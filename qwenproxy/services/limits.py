"""The limit engine: request-count, token and cost limits over the ledger's aggregates,
shared by every instance on one database. Each instance leases a block of a request
limit's remaining count in one locked transaction (`qp_limit_leases`) and admits from it
without touching the database; the ledger writer hands back, in the transaction that
counts a batch, the leased requests it counts. Near a limit blocks shrink to one request,
so every request is reserved in the database. Token and cost limits admit freely far from
the limit and one request at a time per instance near it, each after a fresh read.
"""

from __future__ import annotations

import calendar
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from qwenproxy.services import usage_aggregates as agg
from qwenproxy.services.store import Database, database_errors, metadata

log = logging.getLogger(__name__)

LEASE_TTL_S = 60.0  # a dead instance's share is free again after this
LEASE_USE_S = 30.0  # an instance re-leases (re-reads the counts) at least this often
MAX_BLOCK = 100  # requests one lease hands out at most
BLOCK_SHARE = 10  # a lease takes at most 1/BLOCK_SHARE of what is available
SPEND_READ_S = 2.0  # how old a token/cost reading may be far from the limit
SPEND_NEAR = 0.2  # "near" a token/cost limit: less than this share of it left
MEASURES = {"requests": "requests", "tokens": "total_tokens", "cost": "cost_sum"}

leases_table = sa.Table(
    "qp_limit_leases",
    metadata,
    sa.Column("scope", sa.String(200), primary_key=True),
    sa.Column("instance", sa.String(32), primary_key=True),
    sa.Column("outstanding", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("expires_at", sa.Float, nullable=False),
)


def month_start(now: float) -> int:
    t = time.gmtime(now)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))


def next_month_start(now: float) -> int:
    t = time.gmtime(now)
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return calendar.timegm((year, month, 1, 0, 0, 0))


@dataclass(frozen=True)
class Scope:
    """One limit: `limit` of `measure` in the aggregates of (`dim`, `grp`) over a rolling
    window of `seconds`, or over the current UTC `period` ("day" or "month")."""

    key: str
    dim: str
    grp: str
    limit: float
    measure: str = "requests"
    seconds: float | None = None
    period: str | None = None

    def span(self, now: float) -> tuple[int, int]:
        """[lo, hi) of bucket starts the limit counts now. Rolling windows start at the
        minute holding now - seconds (a conservative reading: up to a minute more)."""
        if self.seconds is not None:
            return agg.window(now, self.seconds)
        first = int(now // 86400) * 86400 if self.period == "day" else month_start(now)
        return first, int(now // 60) * 60 + 60

    def parts(self, now: float) -> list[Any]:
        lo, hi = self.span(now)
        return agg.parts_for(self.dim, lo, hi)

    def period_end(self, now: float) -> float:
        if self.period == "day":
            return int(now // 86400) * 86400 + 86400
        return next_month_start(now)


def _ranges(parts: Sequence[tuple[str, int, int]], columns: str) -> tuple[str, dict[str, Any]]:
    """A UNION ALL of one index range per part, of `columns` of group `:grp` in `:dim`."""
    if not parts:
        return f"SELECT {columns} FROM qp_usage_agg WHERE 1 = 0", {}
    selects, params = [], {}
    for i, (res, first, end) in enumerate(parts):
        selects.append(
            f"SELECT {columns} FROM qp_usage_agg WHERE dim = :dim AND res = :r{i} "
            f"AND bucket >= :a{i} AND bucket < :b{i} AND grp = :grp"
        )
        params.update({f"r{i}": res, f"a{i}": first, f"b{i}": end})
    return " UNION ALL ".join(selects), params


def used_sql(scope: Scope, now: float) -> tuple[str, dict[str, Any]]:
    column = MEASURES[scope.measure]
    inner, params = _ranges(scope.parts(now), column)
    sql = f"SELECT COALESCE(SUM({column}), 0) FROM ({inner}) AS used_buckets"
    return sql, {**params, "dim": scope.dim, "grp": scope.grp}


_ACQUIRE_SQL = (
    "SELECT ({used}), "
    "COALESCE((SELECT SUM(outstanding) FROM qp_limit_leases WHERE scope = :scope "
    "AND instance <> :me AND expires_at > :now), 0), "
    "COALESCE((SELECT outstanding FROM qp_limit_leases WHERE scope = :scope "
    "AND instance = :me), 0)"
)
_LEASE_UPSERT = (
    "INSERT INTO qp_limit_leases (scope, instance, outstanding, expires_at) "
    "VALUES (:scope, :me, :delta, :expires) ON CONFLICT (scope, instance) DO UPDATE SET "
    "outstanding = qp_limit_leases.outstanding + excluded.outstanding, "
    "expires_at = excluded.expires_at"
)
_HAND_BACK = (
    "UPDATE qp_limit_leases SET outstanding = outstanding - :n "
    "WHERE scope = :scope AND instance = :me"
)


class _Lease:
    """This instance's share of one request limit."""

    __slots__ = ("left", "valid_until", "pending", "available", "granted", "lock")

    def __init__(self) -> None:
        self.left = 0  # requests this instance may still admit without the database
        self.valid_until = 0.0
        self.pending = 0  # admitted, not yet counted by the ledger
        self.available = 0.0  # what was available when the lease was taken
        self.granted = 0
        self.lock = threading.Lock()


class _Spend:
    """What this instance knows of one token or cost limit."""

    __slots__ = ("used", "read_at", "inflight", "lock")

    def __init__(self) -> None:
        self.used = 0.0
        self.read_at = float("-inf")
        self.inflight = 0
        self.lock = threading.Lock()


class LimitEngine:
    """Admission against shared limits. `take`/`give_back` for request counts, `may_spend`
    / `spent` for tokens and cost; `hand_back_sql` is the ledger writer's part. All database
    work goes through `Database.offload`/`query` (off the gevent hub)."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], float] = time.time,
        instance: str | None = None,
        flush: Callable[[], object] | None = None,
    ) -> None:
        self._db = db
        self._clock = clock
        self.instance = instance or uuid.uuid4().hex
        self._flush = flush  # writes this instance's finished requests (near a limit)
        self._leases: dict[str, _Lease] = {}
        self._spends: dict[str, _Spend] = {}
        self._counted: Callable[[Any], Iterable[str]] = lambda rec: ()

    def counts_with(self, counted: Callable[[Any], Iterable[str]]) -> None:
        """`counted(record)`: the keys of the request limits a ledger row counts toward."""
        self._counted = counted

    # --- request counts --------------------------------------------------------------

    def take(self, scope: Scope) -> bool:
        """Admit one request against `scope`: from this instance's lease, or (when it is
        used up or old) after leasing more in the database. False: the limit is spent."""
        lease = self._leases.get(scope.key)
        if lease is None:
            lease = self._leases.setdefault(scope.key, _Lease())
        if lease.left > 0 and self._clock() < lease.valid_until:
            lease.left -= 1
            lease.pending += 1
            return True
        with lease.lock:
            if lease.left > 0 and self._clock() < lease.valid_until:
                lease.left -= 1
                lease.pending += 1
                return True
            self._lease(scope, lease)
            if lease.left <= 0:
                return False
            lease.left -= 1
            lease.pending += 1
            return True

    def give_back(self, scope: Scope) -> None:
        """An admitted request that will not be counted (it went to another key)."""
        lease = self._leases.get(scope.key)
        if lease is not None and lease.pending > 0:
            lease.pending -= 1
            lease.left += 1

    def remaining_estimate(self, scope: Scope) -> int | None:
        """What was left at the last lease, less what this instance admitted since."""
        lease = self._leases.get(scope.key)
        if lease is None or lease.valid_until == 0.0:
            return None
        return max(0, int(lease.available - (lease.granted - lease.left)))

    def _lease(self, scope: Scope, lease: _Lease) -> None:
        now = self._clock()
        used_text, params = used_sql(scope, now)
        old_left = lease.left if lease.left > 0 else 0
        values = {**params, "scope": scope.key, "me": self.instance, "now": now}
        lock_pg = not self._db.is_sqlite

        def work(conn: Any) -> tuple[float, int]:
            cursor = conn.cursor()
            try:
                if lock_pg:
                    cursor.execute(
                        "SELECT pg_advisory_xact_lock(hashtext(%(scope)s))", {"scope": scope.key}
                    )
                else:
                    cursor.execute("BEGIN IMMEDIATE")
                cursor.execute(self._db.sql(_ACQUIRE_SQL.format(used=used_text)), values)
                used, others, own = cursor.fetchone()
                pending = max(0, int(own) - old_left)
                available = scope.limit - float(used) - float(others) - pending
                grant = _block(available)
                cursor.execute(
                    self._db.sql(_LEASE_UPSERT),
                    {
                        "scope": scope.key,
                        "me": self.instance,
                        "delta": grant - old_left,
                        "expires": now + LEASE_TTL_S,
                    },
                )
            finally:
                cursor.close()
            conn.commit()
            return available, grant

        with database_errors("leasing a quota", code="quota_database_unavailable"):
            available, grant = self._db.offload(work)
        lease.left, lease.granted, lease.available = grant, grant, max(0.0, available)
        lease.valid_until = now + LEASE_USE_S

    def hand_back_sql(self, batch: Sequence[Any]) -> Callable[[Any], None] | None:
        """What the ledger writer runs in the transaction that counts `batch`: this
        instance's leases lose the requests the batch counts (so a request is counted once:
        leased until then, in the aggregates after). Called on the writer's side of the
        hub; returns None when the batch counts toward no lease."""
        counts: dict[str, int] = {}
        for rec in batch:
            for key in self._counted(rec):
                lease = self._leases.get(key)
                if lease is not None and lease.pending > counts.get(key, 0):
                    counts[key] = counts.get(key, 0) + 1
        if not counts:
            return None
        for key, n in counts.items():
            self._leases[key].pending -= n
        statement = self._db.sql(_HAND_BACK)
        rows = [{"n": n, "scope": key, "me": self.instance} for key, n in sorted(counts.items())]

        def run(cursor: Any) -> None:
            cursor.executemany(statement, rows)

        return run

    # --- tokens and cost ---------------------------------------------------------------

    def may_spend(self, scope: Scope) -> bool:
        """Whether a request may start against a token or cost limit. Far from it: by a
        reading at most SPEND_READ_S old. Near it: one request of this instance at a
        time, each after this instance's rows are written and the count read afresh."""
        state = self._spends.get(scope.key)
        if state is None:
            state = self._spends.setdefault(scope.key, _Spend())
        now = self._clock()
        if now - state.read_at > SPEND_READ_S:
            state.used, state.read_at = self.used(scope), now
        if scope.limit - state.used > scope.limit * SPEND_NEAR:
            state.inflight += 1
            return True
        with state.lock:
            if state.inflight > 0:
                return False
            self.settle()
            state.used, state.read_at = self.used(scope), self._clock()
            if state.used >= scope.limit:
                return False
            state.inflight += 1
            return True

    def spent(self, scope: Scope, amount: float = 0.0) -> None:
        """A request admitted by `may_spend` has finished, spending `amount` (added to this
        instance's reading until the next one, which counts it from the ledger)."""
        state = self._spends.get(scope.key)
        if state is not None and state.inflight > 0:
            state.inflight -= 1
            state.used += amount

    # --- readings ----------------------------------------------------------------------

    def settle(self) -> None:
        """Write this instance's finished requests, so the next reading counts them (on
        refusal paths only: a flush waits for the database)."""
        if self._flush is not None:
            self._flush()

    def used(self, scope: Scope) -> float:
        sql, params = used_sql(scope, self._clock())
        with database_errors("reading a quota", code="quota_database_unavailable"):
            rows = self._db.query(sql, params)
        return float(rows[0][0] or 0)

    def frees_at(self, scope: Scope, used: float) -> float | None:
        """When the count next falls below the limit (or, when it is not spent, when the
        oldest counted request leaves the window): None with nothing counted. Rolling
        windows free a minute bucket at a time (hour buckets of windows over a day: the
        hour's end, a conservative reading); calendar periods free at their end."""
        now = self._clock()
        if used <= 0:
            return None
        if scope.seconds is None:
            return float(scope.period_end(now))
        lo, hi = scope.span(now)
        levels = agg.RESOLUTIONS[:1] if scope.seconds <= 86400 else agg.RESOLUTIONS[:2]
        parts = agg.cover(lo, hi, levels)
        column = MEASURES[scope.measure]
        inner, params = _ranges(parts, f"bucket, res, {column}")
        sql = f"SELECT * FROM ({inner}) AS b ORDER BY 1"
        with database_errors("reading a quota", code="quota_database_unavailable"):
            rows = self._db.query(sql, {**params, "dim": scope.dim, "grp": scope.grp})
        need = max(1.0, used - scope.limit + 1)
        total = 0.0
        for bucket, res, value in rows:
            total += float(value or 0)
            if total >= need:
                return float(bucket) + agg.WIDTH[res] + scope.seconds
        return now + 60.0


def _block(available: float) -> int:
    """How many requests one lease takes: a share of what is available, one near the
    limit, none when nothing is."""
    if available < 1:
        return 0
    return int(max(1, min(MAX_BLOCK, available // BLOCK_SHARE)))
