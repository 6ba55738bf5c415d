"""The ledger's aggregates (ledger/aggregates.py): windows tiled by day, hour and
minute buckets, histogram percentiles within the documented error, and the same answers
from the aggregates as from the raw rows (on SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime
import math
import random

import pytest

from qwenproxy.ledger import aggregates as agg
from qwenproxy.ledger.writer import UsageLedger, UsageRecord

DAY, HOUR = 86400, 3600
NOW = 1767225600.0 + 5 * DAY + 13 * HOUR + 17 * 60 + 42  # 2026-01-06T13:17:42Z


def buckets_of(parts):
    """Every (start, end) bucket the parts name."""
    for res, first, end in parts:
        width = agg.WIDTH[res]
        for start in range(first, end, width):
            yield start, start + width


@pytest.mark.parametrize("since", [60, 59 * 60, 3 * HOUR + 7, DAY, 2 * DAY + 5, 30 * DAY, 91 * DAY])
def test_a_window_is_tiled_exactly_by_at_most_five_ranges(since):
    lo, hi = agg.window(NOW, since)
    parts = agg.cover(lo, hi)
    assert len(parts) <= 5
    tiles = sorted(buckets_of(parts))
    assert tiles[0][0] == lo and tiles[-1][1] == hi
    assert all(a[1] == b[0] for a, b in zip(tiles, tiles[1:], strict=False))  # no gap, no overlap
    # at most 2 x 59 minutes and 2 x 23 hours, whatever the length of the window
    assert sum(1 for res, a, b in parts if res != "d" for _ in range(a, b, agg.WIDTH[res])) <= 164


def test_the_window_holds_the_minute_of_its_start_and_the_current_minute():
    lo, hi = agg.window(NOW, 3600)
    assert lo == int((NOW - 3600) // 60 * 60) and hi == int(NOW // 60 * 60 + 60)


def exact_percentile(values, q):
    """Linear interpolation between order statistics, as numpy's default does."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@pytest.mark.parametrize("seed", range(5))
def test_histogram_percentiles_are_within_the_documented_error(seed):
    rng = random.Random(seed)
    values = [rng.lognormvariate(6, 1.5) + 1 for _ in range(rng.randint(1, 3000))]
    counts = [0] * agg.BINS
    for value in values:
        counts[agg.bin_of(value)] += 1
    for q in (0.5, 0.95, 0.99):
        exact = exact_percentile(values, q)
        assert agg.hist_percentile(counts, q) == pytest.approx(exact, rel=agg.PERCENTILE_ERROR)
    assert agg.hist_percentile([0] * agg.BINS, 0.5) is None


def test_sub_millisecond_and_huge_durations_have_their_own_bins():
    assert agg.bin_of(0.0) == agg.bin_of(0.99) == 0
    assert agg.bin_of(1.0) == 1
    assert agg.bin_of(10 ** 9) == agg.BINS - 1
    assert agg.PERCENTILE_ERROR == pytest.approx(0.1225, abs=1e-4)


def random_records(rng: random.Random, count: int, span_s: float) -> list[UsageRecord]:
    records = []
    for _ in range(count):
        failed = rng.random() < 0.1
        stream = rng.random() < 0.6
        records.append(
            UsageRecord(
                started_at=NOW - rng.random() * span_s,
                session_id=rng.choice(["s1", "s2", "s3", None]),
                client_key_id=rng.choice(["k1", "k2", None]),
                backend=rng.choice(["dashscope", "coding-plan", "openrouter"]),
                upstream_model=rng.choice(["qwen3-coder-plus", "qwen3.7-plus", ""]),
                requested_model=rng.choice(["coder", "qwen3-coder-plus"]),
                stream=stream,
                status=rng.choice([429, 502]) if failed else 200,
                prompt_tokens=None if failed else rng.randint(10, 200000),
                completion_tokens=None if failed else rng.randint(1, 8000),
                cached_tokens=rng.choice([None, 0, 1024]),
                cache_write_tokens=rng.choice([None, 0, 900]),
                cost=None if failed or rng.random() < 0.2 else rng.uniform(0, 0.05),
                latency_ms=rng.lognormvariate(7, 1),
                ttft_ms=rng.lognormvariate(5, 1) if stream and not failed else None,
                tokens_per_s=None if failed else rng.uniform(5, 200),
            )
        )
    return records


GROUP_KEY = {
    None: lambda r: "all",
    "model": lambda r: r.upstream_model or r.requested_model or "-",
    "backend": lambda r: r.backend or "-",
    "session": lambda r: r.session_id or "-",
    "key": lambda r: r.client_key_id or "-",
    "day": lambda r: datetime.datetime.fromtimestamp(r.started_at, datetime.timezone.utc)
    .date()
    .isoformat(),
}


def bounds(since_s, group_by):
    """The window the ledger documents: whole minutes, or whole hours by session and key."""
    lo, hi = agg.window(NOW, since_s)
    if group_by in ("session", "key"):
        lo, hi = lo // HOUR * HOUR, -(-hi // HOUR) * HOUR
    return lo, hi


def oracle(records, since_s, group_by):
    """Stats computed here from the raw records, over the same window."""
    lo, hi = bounds(since_s, group_by)
    inside = [r for r in records if lo <= r.started_at < hi]
    groups: dict[str, list[UsageRecord]] = {}
    for r in inside:
        groups.setdefault(GROUP_KEY[group_by](r), []).append(r)
    result = {}
    for name, rows in groups.items():
        latencies = [r.latency_ms for r in rows]
        ttfts = [r.ttft_ms for r in rows if r.ttft_ms is not None]
        rates = [r.tokens_per_s for r in rows if r.tokens_per_s is not None]
        result[name] = {
            "requests": len(rows),
            "errors": sum(r.status >= 400 for r in rows),
            "prompt_tokens": sum(r.prompt_tokens or 0 for r in rows),
            "completion_tokens": sum(r.completion_tokens or 0 for r in rows),
            "total_tokens": sum((r.prompt_tokens or 0) + (r.completion_tokens or 0) for r in rows),
            "cached_tokens": sum(r.cached_tokens or 0 for r in rows),
            "cache_write_tokens": sum(r.cache_write_tokens or 0 for r in rows),
            "cost_unknown_requests": sum(r.cost is None for r in rows),
            "latency_ms_p50": exact_percentile(latencies, 0.5),
            "latency_ms_p95": exact_percentile(latencies, 0.95),
            "ttft_ms_p50": exact_percentile(ttfts, 0.5) if ttfts else None,
            "ttft_ms_p95": exact_percentile(ttfts, 0.95) if ttfts else None,
            "tokens_per_s_avg": sum(rates) / len(rates) if rates else None,
        }
    return result


class Clock:
    def __call__(self) -> float:
        return NOW


@pytest.mark.parametrize("group_by", [None, "model", "backend", "session", "key", "day"])
def test_stats_from_the_aggregates_match_the_raw_rows(database, group_by):
    rng = random.Random(7)
    records = random_records(rng, 1500, 40 * DAY)
    ledger = UsageLedger(database, clock=Clock(), batch_size=200)
    try:
        for r in records:
            ledger.record(r)
        assert ledger.flush(timeout=30)
        for since_s in (50 * 60, 7 * HOUR + 11, 3 * DAY, 30 * DAY):
            expected = oracle(records, since_s, group_by)
            lo, hi = bounds(since_s, group_by)
            rows_of: dict[str, list[UsageRecord]] = {}
            for r in records:
                if lo <= r.started_at < hi:
                    rows_of.setdefault(GROUP_KEY[group_by](r), []).append(r)
            got = {row["group"]: row for row in ledger.stats(since_s, group_by)}
            assert set(got) == set(expected) or (not expected and got["all"]["requests"] == 0)
            for name, want in expected.items():
                row = got[name]
                for field in ("requests", "errors", "prompt_tokens", "completion_tokens",
                              "total_tokens", "cached_tokens", "cache_write_tokens",
                              "cost_unknown_requests"):  # fmt: skip
                    assert row[field] == want[field], (since_s, name, field)
                for field in ("latency_ms_p50", "latency_ms_p95", "ttft_ms_p50", "ttft_ms_p95"):
                    if want[field] is None:
                        assert row[field] is None
                    else:  # the reported value is rounded to 0.1 ms
                        assert abs(row[field] - want[field]) <= (
                            want[field] * agg.PERCENTILE_ERROR + 0.05
                        ), (since_s, name, field)
                assert row["tokens_per_s_avg"] == pytest.approx(want["tokens_per_s_avg"], abs=0.05)
                priced = [r.cost for r in rows_of[name] if r.cost is not None]
                assert row["cost"] == (pytest.approx(sum(priced), abs=1e-6) if priced else None)
    finally:
        ledger.close()


def test_overview_totals_equal_stats_and_the_series_adds_up(database):
    records = random_records(random.Random(3), 800, 10 * DAY)
    ledger = UsageLedger(database, clock=Clock())
    try:
        for r in records:
            ledger.record(r)
        ledger.flush(timeout=30)
        for since_s in (3600, 86400, 7 * DAY):
            overview = ledger.overview(since_s)
            [total] = ledger.stats(since_s)
            assert overview["total"] == total
            assert sum(p["requests"] for p in overview["series"]) == total["requests"]
            assert sum(p["prompt_tokens"] for p in overview["series"]) == total["prompt_tokens"]
            assert sum(g["requests"] for g in overview["by_backend"]) == total["requests"]
    finally:
        ledger.close()


def test_sessions_and_keys_get_hour_buckets_but_no_minute_buckets():
    deltas = agg.Deltas()
    deltas.add((NOW, 200, "b", "m", "", "s1", "k1", 1, 1, None, None, 10.0, None, None, None, None))
    kinds = {(row[0], row[1]) for row in deltas.rows()}
    assert ("session", "m") not in kinds and ("key", "m") not in kinds
    assert {("session", "h"), ("session", "d"), ("key", "h"), ("all", "m"), ("model", "m")} <= kinds
