"""UsageLedger on SQLite and PostgreSQL: batched writes, a bounded queue that drops the
oldest rows, flush on close, a writer that survives database failures, request log lines,
and the stats / recent / overview queries against a known set of rows."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from qwenproxy.config.secrets import KnownSecrets
from qwenproxy.errors import ServiceUnavailableError
from qwenproxy.ledger.aggregates import PERCENTILE_ERROR, agg_table
from qwenproxy.ledger.records import UsageRecord, tokens_per_second, usage_table
from qwenproxy.ledger.stats import GROUP_BY
from qwenproxy.ledger.writer import NullLedger, UsageLedger
from qwenproxy.logs import SecretFilter
from qwenproxy.store import Database

NOW = 1767225600.0  # 2026-01-01T00:00:00Z


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Captured(logging.Handler):
    """Collects the records of one logger, whatever the package's handlers do."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # as this handler saw it: later handlers' filters may still rewrite the record
        self.messages.append(record.getMessage())


@pytest.fixture
def capture() -> Iterator:
    attached: list[tuple[logging.Logger, Captured, int]] = []

    def attach(name: str) -> Captured:
        logger = logging.getLogger(name)
        handler = Captured()
        attached.append((logger, handler, logger.level))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        return handler

    yield attach
    for logger, handler, level in attached:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def make_ledger(database: Database) -> Iterator:
    ledgers: list[UsageLedger] = []

    def make(**kwargs) -> UsageLedger:
        kwargs.setdefault("clock", Clock())
        ledger = UsageLedger(database, **kwargs)
        ledgers.append(ledger)
        return ledger

    yield make
    for ledger in ledgers:
        ledger.close(timeout=2)


def rec(offset_s: float = 10.0, **fields) -> UsageRecord:
    values = {
        "started_at": NOW - offset_s,
        "backend": "qwen-oauth",
        "upstream_model": "coder-model",
        "requested_model": "qwen3-coder-plus",
        "latency_ms": 100.0,
    }
    values.update(fields)
    return UsageRecord(**values)


def count_rows(db: Database) -> int:
    with db.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(usage_table)).scalar_one()


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


# --- writing ------------------------------------------------------------------------------


def test_rows_are_written_in_batches_of_batch_size(database, make_ledger, monkeypatch):
    counts: list[int] = []
    offload = database.offload

    def counting(work):  # the database sees one transaction per batch
        before = count_rows(database)
        result = offload(work)
        counts.append(count_rows(database) - before)
        return result

    ledger = make_ledger(batch_size=3)
    for i in range(7):
        ledger.record(rec(session_id=f"s{i}"))
    assert count_rows(database) == 0  # record() does no I/O
    monkeypatch.setattr(database, "offload", counting)
    assert ledger.flush() is True
    assert counts == [3, 3, 1]
    assert ledger.written == 7 and ledger.pending == 0
    assert count_rows(database) == 7


def test_written_rows_read_back_with_every_field(make_ledger):
    ledger = make_ledger()
    original = rec(
        session_id="sess-1",
        client_key_id="abc123def456",
        stream=True,
        status=429,
        error_code="rate_limit_exceeded",
        prompt_tokens=12,
        completion_tokens=34,
        total_tokens=46,
        cached_tokens=5,
        latency_ms=1234.5,
        ttft_ms=210.25,
        upstream_latency_ms=1200.0,
        tokens_per_s=33.5,
        failover_attempts=2,
        loop_detected=True,
        command_only=False,
    )
    ledger.record(original)
    ledger.flush()
    [row] = ledger.recent(10)
    assert row == original.as_row()


def test_background_writer_writes_without_flush(make_ledger):
    ledger = make_ledger(flush_interval=0.01)
    ledger.start()
    for _ in range(5):
        ledger.record(rec())
    wait_for(lambda: ledger.written == 5)


def test_full_queue_drops_the_oldest_rows_and_counts_them(make_ledger):
    ledger = make_ledger(queue_size=3)
    records = [rec(offset_s=100 - i, session_id=f"s{i}") for i in range(5)]
    for r in records:
        ledger.record(r)
    assert ledger.dropped == 2
    ledger.flush()
    assert [row["session_id"] for row in ledger.recent(10)] == ["s4", "s3", "s2"]


def test_dropping_warns_at_most_once_a_minute(make_ledger, capture):
    log = capture("qwenproxy.ledger.writer")
    clock = Clock()
    ledger = make_ledger(queue_size=2, clock=clock)
    for _ in range(5):
        ledger.record(rec())
    ledger.flush()
    for _ in range(5):
        ledger.record(rec())
    ledger.flush()
    warnings = [m for m in log.messages if "dropped" in m]
    assert len(warnings) == 1 and "dropped 3 oldest" in warnings[0]
    clock.now += 61
    ledger.flush()
    warnings = [m for m in log.messages if "dropped" in m]
    assert len(warnings) == 2 and "dropped 3 oldest" in warnings[1] and "6 in total" in warnings[1]


def test_close_writes_what_is_still_queued(database, make_ledger):
    ledger = make_ledger(flush_interval=60, batch_size=1000)
    ledger.start()
    for _ in range(3):
        ledger.record(rec())
    ledger.close()
    assert count_rows(database) == 3


def test_failing_database_write_does_not_kill_the_writer(database, make_ledger, capture):
    log = capture("qwenproxy.ledger.writer")
    ledger = make_ledger(flush_interval=0.01)
    ledger.start()
    usage_table.drop(database.engine)
    ledger.record(rec(session_id="session-secret-xyz"))
    wait_for(lambda: ledger.failed == 1)
    usage_table.create(database.engine)
    ledger.record(rec(session_id="after"))
    wait_for(lambda: ledger.written == 1)
    assert [row["session_id"] for row in ledger.recent(10)] == ["after"]
    failures = [m for m in log.messages if "could not write" in m]
    assert failures and all("session-secret-xyz" not in m for m in failures)


def test_each_request_is_logged_as_one_human_line(make_ledger, capture):
    log = capture("qwenproxy.requests")
    log.addFilter(SecretFilter(KnownSecrets()))  # the line must pass the log scrubber unchanged
    ledger = make_ledger()
    r = rec(
        session_id="s1",
        client_key_id="3f2a9c1b7d4e",
        prompt_tokens=10,
        completion_tokens=5,
        latency_ms=120.4,
        ttft_ms=30.0,
        stream=True,
        error_code=None,
    )
    ledger.record(r)
    ledger.flush()
    assert log.messages == [
        f"req {r.id[:8]} session=s1 client=3f2a9c1b7d4e backend=qwen-oauth model=coder-model "
        "status=200 tokens=10/5 latency=120ms ttft=30ms stream"
    ]


def test_client_chosen_names_cannot_forge_log_lines(make_ledger, capture):
    log = capture("qwenproxy.requests")
    ledger = make_ledger()
    ledger.record(rec(upstream_model="evil\nreq forged status=200", session_id="a b"))
    ledger.flush()
    [line] = log.messages
    assert "\n" not in line and "session=a_b" in line and "model=evil_req_forged" in line


def test_json_log_format_is_one_object_per_request(make_ledger, capture):
    log = capture("qwenproxy.requests")
    ledger = make_ledger(log_format="json")
    r = rec(prompt_tokens=3, completion_tokens=4)
    ledger.record(r)
    ledger.flush()
    [line] = log.messages
    body = json.loads(line)
    assert body["id"] == r.id and body["prompt_tokens"] == 3 and body["event"] == "request"
    assert set(body) == {"event", *r.as_row()}


def test_the_usage_table_exists_after_opening_the_database(database):
    assert "qp_usage" in sa.inspect(database.engine).get_table_names()
    assert "ix_qp_usage_started_at" in {
        index["name"] for index in sa.inspect(database.engine).get_indexes("qp_usage")
    }


# --- queries ------------------------------------------------------------------------------

# started_at offsets from NOW; NOW is midnight UTC, so the first three fall on 2025-12-31
# and the fourth on 2025-12-30; the last is older than any period the tests ask for.
KNOWN = [
    dict(
        offset_s=100,
        backend="qwen-oauth",
        upstream_model="coder-model",
        session_id="s1",
        client_key_id="k1",
        prompt_tokens=100,
        completion_tokens=50,
        total_tokens=150,
        latency_ms=100.0,
        tokens_per_s=10.0,
    ),
    dict(
        offset_s=200,
        backend="qwen-oauth",
        upstream_model="coder-model",
        session_id="s1",
        client_key_id="k1",
        stream=True,
        prompt_tokens=200,
        completion_tokens=100,
        latency_ms=200.0,
        ttft_ms=20.0,
        tokens_per_s=20.0,
        cached_tokens=50,
    ),
    dict(
        offset_s=300,
        backend="dashscope",
        upstream_model="qwen3-coder-plus",
        session_id="s2",
        client_key_id="k2",
        status=502,
        error_code="upstream_error",
        latency_ms=300.0,
    ),
    dict(
        offset_s=90000,
        backend="dashscope",
        upstream_model="qwen3-coder-plus",
        session_id="s2",
        client_key_id="k2",
        stream=True,
        prompt_tokens=10,
        completion_tokens=5,
        latency_ms=400.0,
        ttft_ms=40.0,
        tokens_per_s=30.0,
    ),
    dict(offset_s=40 * 86400, backend="dashscope", upstream_model="old", latency_ms=1.0),
]


@pytest.fixture
def known(make_ledger) -> UsageLedger:
    ledger = make_ledger()
    for fields in KNOWN:
        ledger.record(rec(**fields))
    ledger.flush()
    return ledger


def by_group(rows: list[dict]) -> dict[str, dict]:
    return {row["group"]: row for row in rows}


def near(exact: float) -> object:
    """A percentile read from the aggregates' histogram: within the documented error."""
    return pytest.approx(exact, rel=PERCENTILE_ERROR)


def test_stats_without_grouping_summarise_the_period(known):
    [total] = known.stats(3600)
    assert total == {
        "group": "all",
        "requests": 3,
        "errors": 1,
        "prompt_tokens": 300,
        "completion_tokens": 150,
        "total_tokens": 450,  # a missing total counts as prompt + completion
        "cached_tokens": 50,
        "latency_ms_p50": near(200.0),
        "latency_ms_p95": near(290.0),
        "ttft_ms_p50": near(20.0),
        "ttft_ms_p95": near(20.0),
        "tokens_per_s_avg": 15.0,
        "cache_write_tokens": 0,
        "cache_hit_ratio": round(50 / 300, 4),
        "cost": None,  # no row has a price
        "cost_unknown_requests": 3,
    }


def test_since_filters_by_start_time(known):
    assert known.stats(3600)[0]["requests"] == 3
    assert known.stats(2 * 86400)[0]["requests"] == 4
    assert known.stats(30 * 86400)[0]["requests"] == 4
    assert known.stats(50)[0]["requests"] == 0


def test_stats_by_model(known):
    groups = known.stats(2 * 86400, "model")
    assert [g["group"] for g in groups] == ["coder-model", "qwen3-coder-plus"]
    coder, plus = groups
    assert (coder["requests"], coder["errors"], coder["total_tokens"]) == (2, 0, 450)
    assert (coder["latency_ms_p50"], coder["latency_ms_p95"]) == (near(150.0), near(195.0))
    assert (plus["requests"], plus["errors"], plus["prompt_tokens"]) == (2, 1, 10)
    assert (plus["ttft_ms_p50"], plus["tokens_per_s_avg"]) == (near(40.0), 30.0)


def test_stats_by_backend_session_and_key(known):
    backend = by_group(known.stats(3600, "backend"))
    assert {g: (s["requests"], s["errors"]) for g, s in backend.items()} == {
        "qwen-oauth": (2, 0),
        "dashscope": (1, 1),
    }
    session = by_group(known.stats(2 * 86400, "session"))
    assert {g: s["requests"] for g, s in session.items()} == {"s1": 2, "s2": 2}
    key = by_group(known.stats(2 * 86400, "key"))
    assert {g: s["completion_tokens"] for g, s in key.items()} == {"k1": 150, "k2": 5}


def test_stats_by_day_use_utc_dates_in_order(known):
    days = known.stats(2 * 86400, "day")
    assert [(d["group"], d["requests"]) for d in days] == [("2025-12-30", 1), ("2025-12-31", 3)]


def test_every_group_by_value_is_accepted_and_others_are_not(known):
    for group_by in GROUP_BY:
        assert sum(g["requests"] for g in known.stats(2 * 86400, group_by)) == 4
    with pytest.raises(ValueError):
        known.stats(3600, "prompt")


def test_recent_is_newest_first_and_limited(known):
    rows = known.recent(2)
    assert [row["latency_ms"] for row in rows] == [100.0, 200.0]
    assert len(known.recent(100)) == 5
    assert set(rows[0]) == set(UsageRecord(started_at=0).as_row())


def test_overview_series_adds_up_to_the_totals(known):
    overview = known.overview(86400)
    assert overview["bucket_s"] == 1800
    assert sum(p["requests"] for p in overview["series"]) == overview["total"]["requests"] == 3
    assert sum(p["errors"] for p in overview["series"]) == 1
    # NOW starts the last (current) bucket; the three rows sit in the half hour before it
    assert [p["requests"] for p in overview["series"][-2:]] == [3, 0]
    assert len(overview["series"]) == 49
    assert [g["group"] for g in overview["by_backend"]] == ["qwen-oauth", "dashscope"]
    assert len(overview["recent"]) == 5


def test_query_on_a_broken_database_is_a_503(make_ledger, database):
    ledger = make_ledger()
    usage_table.drop(database.engine)
    agg_table.drop(database.engine)
    try:
        for read in (lambda: ledger.stats(3600), lambda: ledger.recent(5)):
            with pytest.raises(ServiceUnavailableError) as caught:
                read()
            assert caught.value.code == "usage_database_unavailable"
    finally:
        usage_table.create(database.engine)
        agg_table.create(database.engine)


# --- pure helpers -------------------------------------------------------------------------


def test_null_ledger_records_and_reports_nothing():
    ledger = NullLedger()
    ledger.start()
    ledger.record(rec())
    assert ledger.flush() is True
    ledger.close()
    assert (ledger.enabled, ledger.dropped, ledger.stats(3600), ledger.recent(5)) == (
        False,
        0,
        [],
        [],
    )
    assert ledger.overview(3600)["enabled"] is False


def test_usage_object_fills_token_counts():
    r = rec()
    r.apply_usage(
        {
            "prompt_tokens": 10,
            "completion_tokens": 20,
            "total_tokens": 30,
            "prompt_tokens_details": {"cached_tokens": 4},
        }
    )
    assert (r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cached_tokens) == (
        10,
        20,
        30,
        4,
    )
    r.apply_usage(None)
    r.apply_usage({"prompt_tokens": "many"})
    assert r.prompt_tokens == 10


def test_tokens_per_second_needs_tokens_and_time():
    assert tokens_per_second(100, 2.0) == 50.0
    assert tokens_per_second(None, 2.0) is None
    assert tokens_per_second(100, 0.0) is None
    assert tokens_per_second(0, 1.0) is None


def test_records_get_distinct_ids():
    assert rec().id != rec().id and len(rec().id) == 32
