"""The ledger's upkeep (ledger/upkeep.py): a ledger from before the aggregates
gets them built once, exactly, even with two instances at it; retention deletes old raw
rows and minute buckets in batches and keeps the hour and day buckets."""

from __future__ import annotations

import sqlalchemy as sa

from qwenproxy.ledger.aggregates import agg_table
from qwenproxy.ledger.records import UsageRecord, usage_table
from qwenproxy.ledger.upkeep import LedgerUpkeep
from qwenproxy.ledger.writer import UsageLedger

DAY = 86400
NOW = 1767225600.0 + 40 * DAY


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def old_rows(database, count: int, span_s: float) -> list[UsageRecord]:
    """Rows as an older version wrote them: straight into qp_usage, no aggregates."""
    records = [
        UsageRecord(
            started_at=NOW - span_s * i / count,
            backend="dashscope",
            upstream_model=f"m{i % 3}",
            session_id=f"s{i % 7}",
            prompt_tokens=i,
            completion_tokens=1,
            latency_ms=100.0 + i,
        )
        for i in range(count)
    ]
    with database.engine.begin() as conn:
        conn.execute(usage_table.insert(), [r.as_row() for r in records])
    return records


def test_an_older_ledger_gets_its_aggregates_built_once(database):
    records = old_rows(database, 230, 20 * DAY)
    ledger = UsageLedger(database, clock=Clock())
    first = LedgerUpkeep(database, None, clock=Clock())
    second = LedgerUpkeep(database, None, clock=Clock())
    assert first.prepare() == {"state": "building", "cursor": -1e18, "done": 0, "total": 230}
    # a request served meanwhile is counted by the writer, not again by the backfill
    ledger.record(UsageRecord(started_at=NOW - 5, backend="dashscope", prompt_tokens=1000))
    ledger.flush()
    steps = 0
    while first.backfill_step(chunk=50):
        assert second.backfill_step(chunk=50) is False  # the first one holds the lease
        steps += 1
    assert steps >= 4 and first.state() == {"state": "ready", "done": 230, "total": 230}
    [total] = ledger.stats(30 * DAY)
    assert total["requests"] == 231
    assert total["prompt_tokens"] == sum(r.prompt_tokens for r in records) + 1000
    by_session = {row["group"]: row["requests"] for row in ledger.stats(30 * DAY, "session")}
    assert by_session["s0"] == sum(1 for r in records if r.session_id == "s0")
    assert second.backfill_step() is False and ledger.stats(30 * DAY)[0]["requests"] == 231
    ledger.close()


def test_a_new_ledger_is_ready_at_once(database):
    upkeep = LedgerUpkeep(database, None, clock=Clock())
    assert upkeep.state() == {"state": "unknown"}
    assert upkeep.prepare() == {"state": "ready"}
    assert upkeep.backfill_step() is False


def test_a_stale_lease_is_taken_over(database):
    old_rows(database, 40, DAY)
    clock = Clock()
    first = LedgerUpkeep(database, None, clock=clock)
    second = LedgerUpkeep(database, None, clock=clock)
    assert first.backfill_step(chunk=10) is True
    assert second.backfill_step(chunk=10) is False
    clock.now += 61  # the first instance went away
    while second.backfill_step(chunk=10):
        pass
    assert second.state()["done"] == 40


def count(database, table, *where) -> int:
    with database.engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(table)
        for clause in where:
            query = query.where(clause)
        return conn.execute(query).scalar_one()


def test_retention_deletes_old_raw_rows_and_minute_buckets_but_keeps_the_totals(database):
    clock = Clock()
    ledger = UsageLedger(database, clock=clock)
    for i in range(2500):  # one row every 20 minutes over ~35 days
        ledger.record(UsageRecord(started_at=NOW - i * 1200, backend="b", latency_ms=50.0))
    ledger.flush(timeout=30)
    upkeep = LedgerUpkeep(database, 30 * DAY, clock=clock)
    upkeep.prepare()
    before = ledger.stats(40 * DAY)[0]["requests"]
    cutoff = NOW - 30 * DAY
    minutes = agg_table.c.res == "m"
    deleted = upkeep.expire()
    for _ in range(5):  # each pass deletes up to 50 hours of minute buckets
        if not count(database, agg_table, minutes, agg_table.c.bucket < cutoff - 60):
            break
        deleted += upkeep.expire()
    assert deleted == sum(1 for i in range(2500) if NOW - i * 1200 < cutoff)
    assert count(database, usage_table, usage_table.c.started_at < cutoff) == 0
    assert count(database, usage_table) == 2500 - deleted
    assert count(database, agg_table, minutes, agg_table.c.bucket < cutoff - 60) == 0
    assert count(database, agg_table, minutes) > 0
    ledger.flush()
    # whole days and hours past the retention still count; only the minutes at the
    # window's far edge are gone
    assert ledger.stats(40 * DAY)[0]["requests"] >= before - 3
    assert ledger.recent(1)[0]["started_at"] == NOW
    ledger.close()


def test_retention_keeps_rows_the_backfill_has_not_reached(database):
    old_rows(database, 50, 60 * DAY)
    upkeep = LedgerUpkeep(database, 30 * DAY, clock=Clock())
    upkeep.prepare()
    assert upkeep.expire() == 0
    assert count(database, usage_table) == 50
    while upkeep.backfill_step(chunk=20):
        pass
    assert upkeep.expire() == sum(1 for i in range(50) if 60 * DAY * i / 50 > 30 * DAY)
