"""The limit engine: request-count, token and cost limits over the ledger's aggregates,
shared by every instance on one database. Each instance leases a block of a request
limit's remaining count in one locked transaction (`qp_limit_leases`) and admits from it
without touching the database; the ledger writer hands back, in the transaction that
counts a batch, the leased requests it counts. Near a limit blocks shrink to one request,
so every request is reserved in the database. Token and cost limits lease units the same
way, each request reserving the most one request has spent; near the limit (when not even
that is left) one request per instance at a time, each after a fresh read.
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

from qwenproxy.ledger import aggregates as agg
from qwenproxy.store import Database, database_errors, metadata

log = logging.getLogger(__name__)

LEASE_TTL_S = 60.0  # a dead instance's share is free again after this
LEASE_USE_S = 30.0  # an instance re-leases (re-reads the counts) at least this often
MAX_BLOCK = 100  # requests one lease hands out at most
BLOCK_SHARE = 10  # a lease takes at most 1/BLOCK_SHARE of what is available
MEASURES = {"requests": "requests", "tokens": "total_tokens", "cost": "cost_sum"}
SCALES = {"requests": 1, "tokens": 1, "cost": 1_000_000}  # lease units per measure unit

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


def used_sql(scope: Scope, now: float) -> tuple[str, dict[str, Any]]:
    column = MEASURES[scope.measure]
    inner, params = agg.ranged_rows(scope.parts(now), column, one_group=True)
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
    """This instance's share of one limit, in units (requests, tokens, or millionths of a
    currency unit). Invariant: its row's `outstanding` = left + pending."""

    __slots__ = ("left", "valid_until", "pending", "available", "granted", "estimate",
                 "near", "scale", "lock")  # fmt: skip

    def __init__(self, scale: int, estimate: float) -> None:
        self.left = 0.0  # units this instance may still admit without the database
        self.valid_until = 0.0
        self.pending = 0.0  # admitted or spent, not yet counted by the ledger
        self.available = 0.0  # what was available when the lease was taken
        self.granted = 0.0
        self.estimate = estimate  # units one request reserves (tokens/cost: the most seen)
        self.near = 0  # requests admitted near the limit, without a reserve
        self.scale = scale
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
        self._counted: Callable[[Any], Iterable[tuple[str, float]]] = lambda rec: ()

    def counts_with(self, counted: Callable[[Any], Iterable[tuple[str, float]]]) -> None:
        """`counted(record)`: (limit key, amount) of each limit a ledger row counts toward
        (1 for a request limit, its tokens or cost for the others)."""
        self._counted = counted

    def _lease_of(self, scope: Scope) -> _Lease:
        lease = self._leases.get(scope.key)
        if lease is None:
            scale = SCALES[scope.measure]
            estimate = 1.0 if scope.measure == "requests" else 0.0
            lease = self._leases.setdefault(scope.key, _Lease(scale, estimate))
        return lease

    def _debit(self, lease: _Lease, units: float) -> bool:
        if units > 0 and lease.left >= units and self._clock() < lease.valid_until:
            lease.left -= units
            lease.pending += units
            return True
        return False

    # --- request counts --------------------------------------------------------------

    def take(self, scope: Scope) -> bool:
        """Admit one request against `scope`: from this instance's lease, or (when it is
        used up or old) after leasing more in the database. False: the limit is spent."""
        lease = self._lease_of(scope)
        if self._debit(lease, 1):
            return True
        with lease.lock:
            if self._debit(lease, 1):
                return True
            self._lease(scope, lease, 1)
            return self._debit(lease, 1)

    def give_back(self, scope: Scope) -> None:
        """An admitted request that will not be counted (it went to another key)."""
        lease = self._leases.get(scope.key)
        if lease is not None and lease.pending >= 1:
            lease.pending -= 1
            lease.left += 1

    def remaining_estimate(self, scope: Scope) -> int | None:
        """What was left at the last lease, less what this instance admitted since."""
        lease = self._leases.get(scope.key)
        if lease is None or lease.valid_until == 0.0:
            return None
        return max(0, int(lease.available - (lease.granted - lease.left)))

    # --- tokens and cost ---------------------------------------------------------------

    def may_spend(self, scope: Scope) -> float | None:
        """Admit a request against a token or cost limit: its reserve (hand it to `spent`)
        or None when the limit is spent. Far from the limit a request reserves the most
        one request of this instance has spent so far, from the lease; near it (or before
        anything was seen) one request of this instance at a time, reserving nothing,
        after this instance's rows are written and the counts read afresh."""
        lease = self._lease_of(scope)
        if self._debit(lease, lease.estimate):
            return lease.estimate
        with lease.lock:
            if self._debit(lease, lease.estimate):
                return lease.estimate
            if lease.estimate > 0:  # a new block, if a whole reserve is still available
                self._lease(scope, lease, lease.estimate)
                if self._debit(lease, lease.estimate):
                    return lease.estimate
            if lease.near > 0:
                return None
            self.settle()
            self._lease(scope, lease, max(lease.estimate, 1.0))
            if self._debit(lease, lease.estimate):
                return lease.estimate
            if lease.available <= 0:
                return None
            lease.near += 1
            return 0.0

    def spent(self, scope: Scope, reserve: float, amount: float) -> None:
        """A request admitted by `may_spend` with `reserve` ended, spending `amount` (in
        the measure's own unit): the lease keeps it pending until the ledger counts it."""
        lease = self._leases.get(scope.key)
        if lease is None:
            return
        units = amount * lease.scale
        lease.left -= units - reserve
        lease.pending += units - reserve
        lease.estimate = max(lease.estimate, units)
        if reserve == 0 and lease.near > 0:
            lease.near -= 1

    # --- leasing -----------------------------------------------------------------------

    def _lease(self, scope: Scope, lease: _Lease, want: float) -> None:
        """Take a new block (in one locked transaction) in place of what is left of the
        current one: a share of what no instance holds, at least `want` units if there
        is that much; none if not."""
        now = self._clock()
        used_text, params = used_sql(scope, now)
        old_left = lease.left
        values = {**params, "scope": scope.key, "me": self.instance, "now": now}
        lock_pg = not self._db.is_sqlite

        def work(conn: Any) -> tuple[float, float]:
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
                pending = max(0.0, float(own) - old_left)
                available = (scope.limit - float(used)) * lease.scale - float(others) - pending
                grant = _block(available, want)
                cursor.execute(
                    self._db.sql(_LEASE_UPSERT),
                    {
                        "scope": scope.key,
                        "me": self.instance,
                        "delta": round(grant - old_left),
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
        instance's leases lose what the batch counts (so a request is counted once: leased
        until then, in the aggregates after). Called on the hub's side before the batch is
        written; returns None when the batch counts toward no lease."""
        counts: dict[str, float] = {}
        for rec in batch:
            for key, amount in self._counted(rec):
                lease = self._leases.get(key)
                if lease is None:
                    continue
                units = min(amount * lease.scale, lease.pending - counts.get(key, 0.0))
                if units > 0:
                    counts[key] = counts.get(key, 0.0) + units
        if not counts:
            return None
        for key, units in counts.items():
            self._leases[key].pending -= units
        statement = self._db.sql(_HAND_BACK)
        rows = [
            {"n": round(units), "scope": key, "me": self.instance}
            for key, units in sorted(counts.items())
        ]

        def run(cursor: Any) -> None:
            cursor.executemany(statement, rows)

        return run

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
        inner, params = agg.ranged_rows(parts, f"bucket, res, {column}", one_group=True)
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


def _block(available: float, want: float) -> float:
    """How many units one lease takes: a share of what is available (at most MAX_BLOCK
    requests' worth), at least `want`; none when not even that is available."""
    if available < want or available <= 0:
        return 0.0
    return float(int(max(want, min(MAX_BLOCK * want, available // BLOCK_SHARE))))
