"""The limit engine on each database: leases shared by instances, the ledger's hand-back,
expiry of a dead instance's share, and token limits near their end."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from qwenproxy.ledger.limits import LEASE_TTL_S, LimitEngine, Scope
from qwenproxy.ledger.records import UsageRecord
from qwenproxy.ledger.writer import UsageLedger
from qwenproxy.store import Database

NOW = 1_767_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingDatabase(Database):
    """The real database, counting the round trips the engine makes."""

    calls = 0

    def offload(self, work: Any) -> Any:
        self.calls += 1
        return super().offload(work)


class Instance:
    """One proxy instance: its engine and its ledger writer on the shared database."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self.ledger = UsageLedger(db, clock=clock)
        self.engine = LimitEngine(db, clock, flush=self.ledger.flush)
        self.ledger.batch_hooks.append(self.engine.hand_back_sql)
        # what QuotaGate.counted says in the app: a row answered by key k1 counts toward it
        self.engine.counts_with(
            lambda rec: [("q:b/k1:5h", 1)] if rec.upstream_key_id == "k1" else []
        )
        self.clock = clock

    def serve(self, scope: Scope, ukey: str = "k1") -> bool:
        """Admit a request; when admitted, record it as answered by `ukey`."""
        if not self.engine.take(scope):
            return False
        self.ledger.record(
            UsageRecord(started_at=self.clock(), backend="b", upstream_key_id=ukey, status=200)
        )
        return True


@pytest.fixture
def db(database_url: str) -> Iterator[CountingDatabase]:
    database = CountingDatabase(database_url)
    yield database
    database.dispose()


def window(limit: int, seconds: float = 5 * 3600) -> Scope:
    return Scope("q:b/k1:5h", "ukey", "b/k1", limit, seconds=seconds)


def counted(db: Database, scope: Scope) -> float:
    return LimitEngine(db, Clock()).used(scope)


def test_two_instances_share_one_limit_exactly_across_flushes(db):
    clock = Clock()
    a, b = Instance(db, clock), Instance(db, clock)
    scope = window(57)
    admitted = 0
    for i in range(200):
        instance = a if i % 3 else b
        admitted += instance.serve(scope)
        if i % 7 == 0:  # the writers count batches while requests keep coming
            instance.ledger.flush()
    a.ledger.flush()
    b.ledger.flush()
    assert admitted == 57
    assert counted(db, scope) == 57
    # Nothing is leased twice: the leases hold no request the aggregates already count.
    sql = "SELECT SUM(outstanding) FROM qp_limit_leases WHERE scope = :s"
    rows = db.query(sql, {"s": scope.key})
    assert rows[0][0] == 0


def test_far_from_the_limit_requests_are_admitted_without_the_database(db):
    instance = Instance(db, Clock())
    scope = window(6000)
    assert instance.serve(scope)
    before = db.calls
    for _ in range(50):
        assert instance.serve(scope)
    assert db.calls == before  # all from the lease taken by the first request
    assert instance.engine.remaining_estimate(scope) == 6000 - 51


def test_near_the_limit_every_request_is_reserved_in_the_database(db):
    instance = Instance(db, Clock())
    scope = window(5)
    calls = []
    for _ in range(5):
        before = db.calls
        assert instance.serve(scope)
        calls.append(db.calls - before)
    assert all(n == 1 for n in calls)
    assert not instance.serve(scope)


def test_a_dead_instances_share_frees_after_the_lease_expires(db):
    clock = Clock()
    dead, alive = Instance(db, clock), Instance(db, clock)
    scope = window(400)
    assert dead.serve(scope)  # leases a block of 40 and never uses the rest
    dead.ledger.flush()
    assert alive.engine.take(scope)
    assert alive.engine.remaining_estimate(scope) == 400 - 1 - 39 - 1
    clock.now += LEASE_TTL_S + 1
    assert alive.engine.take(scope)  # its own lease is old now: it re-leases
    assert alive.engine.remaining_estimate(scope) == 400 - 1 - 2


def test_an_attempt_given_back_is_not_counted_and_frees_its_place(db):
    instance = Instance(db, Clock())
    scope = window(1)
    assert instance.engine.take(scope)
    instance.engine.give_back(scope)  # it went to another key
    assert instance.serve(scope)
    instance.ledger.flush()
    assert counted(db, scope) == 1
    assert not instance.serve(scope)


def test_a_rolling_window_frees_when_its_oldest_request_leaves(db):
    clock = Clock()
    instance = Instance(db, clock)
    scope = window(2, seconds=3600)
    first_minute = int(clock.now // 60) * 60
    assert instance.serve(scope)
    clock.now += 600
    assert instance.serve(scope)
    instance.ledger.flush()
    assert not instance.serve(scope)
    engine = instance.engine
    assert engine.frees_at(scope, engine.used(scope)) == first_minute + 60 + 3600
    clock.now = first_minute + 60 + 3600
    assert engine.used(scope) == 1
    assert instance.serve(scope)


def tokens_counted(rec):
    return [("b:c1:tokens_per_month", rec.total_tokens)] if rec.client_key_id == "c1" else []


def test_a_token_limit_admits_one_request_at_a_time_near_its_end(db):
    clock = Clock()
    instance = Instance(db, clock)
    instance.engine.counts_with(tokens_counted)
    scope = Scope("b:c1:tokens_per_month", "key", "c1", 1000, "tokens", period="month")
    engine = instance.engine

    def finish(reserve: float, tokens: int) -> None:
        instance.ledger.record(
            UsageRecord(started_at=clock(), client_key_id="c1", total_tokens=tokens)
        )
        engine.spent(scope, reserve, tokens)

    reserve = engine.may_spend(scope)
    assert reserve == 0.0  # nothing seen yet: one at a time
    assert engine.may_spend(scope) is None
    finish(reserve, 100)
    reserves = [engine.may_spend(scope) for _ in range(8)]
    assert reserves == [100.0] * 8  # far from the end: each reserves the most seen
    for reserve in reserves:
        finish(reserve, 100)
    instance.ledger.flush()
    last = engine.may_spend(scope)
    assert last == 100.0  # the 100 left, reserved whole
    assert engine.may_spend(scope) is None  # nothing left for another
    finish(last, 100)
    assert engine.may_spend(scope) is None  # the fresh read (after a flush) sees 1,000
    assert counted_tokens(db, scope) == 1000


def counted_tokens(db: Database, scope: Scope) -> float:
    return LimitEngine(db, Clock()).used(scope)


def test_two_instances_under_a_concurrent_burst_keep_one_budget(db):
    """A client key's requests-per-day and tokens-per-month budgets, each instance with
    its writer running and eight threads asking at once."""
    clock = Clock()
    day = Scope("b:c1:requests_per_day", "key", "c1", 30, period="day")
    tokens = Scope("b:c2:tokens_per_month", "key", "c2", 500, "tokens", period="month")
    instances = [Instance(db, clock), Instance(db, clock)]

    def counted(rec):
        if rec.client_key_id == "c1":
            return [(day.key, 1)]
        return [(tokens.key, rec.total_tokens)] if rec.client_key_id == "c2" else []

    for instance in instances:
        instance.engine.counts_with(counted)
        instance.ledger.start()
    served = {"day": 0, "tokens": 0}
    lock = threading.Lock()

    def ask(i: int) -> None:
        instance = instances[i % 2]
        engine = instance.engine
        if engine.take(day):
            instance.ledger.record(UsageRecord(started_at=clock(), client_key_id="c1"))
            with lock:
                served["day"] += 1
        reserve = engine.may_spend(tokens)
        if reserve is not None:
            rec = UsageRecord(started_at=clock(), client_key_id="c2", total_tokens=40)
            instance.ledger.record(rec)
            engine.spent(tokens, reserve, 40)
            with lock:
                served["tokens"] += 1

    try:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(ask, range(120)))
    finally:
        for instance in instances:
            instance.ledger.close()
    assert served["day"] == 30  # leased exactly: no overshoot at all for request counts
    used = LimitEngine(db, clock).used(tokens)
    assert used == 40 * served["tokens"]
    assert 500 - 2 * 40 <= used <= 500 + 40 * len(instances)  # <= one request per instance over
