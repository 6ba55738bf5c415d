"""One key's usage from the ledger aggregates: only that key's requests, budgets' periods
(today, this month, UTC) and its latest rows."""

from __future__ import annotations

import pytest

from qwenproxy.ledger.key_usage import KeyUsage, month_start, next_month
from qwenproxy.ledger.writer import UsageLedger, UsageRecord

NOW = 1767268800.0  # 2026-01-01T12:00:00Z


@pytest.fixture
def recorded(database):
    ledger = UsageLedger(database, clock=lambda: NOW)
    rows = [  # (seconds ago, key, tokens, cost)
        (60, "alice", 10, 0.5),
        (3 * 3600, "alice", 20, 0.25),
        (13 * 3600, "alice", 40, None),  # 2025-12-31: in the last 24 h, not today
        (120, "bob", 1000, 9.0),
    ]
    for ago, key, tokens, cost in rows:
        ledger.record(
            UsageRecord(
                started_at=NOW - ago,
                client_key_id=key,
                backend="dashscope",
                upstream_model="qwen3-coder-plus",
                requested_model="qwen3-coder-plus",
                prompt_tokens=tokens,
                completion_tokens=0,
                total_tokens=tokens,
                cost=cost,
                latency_ms=50.0,
            )
        )
    ledger.flush()
    yield KeyUsage(database, clock=lambda: NOW)
    ledger.close()


def test_stats_hold_only_the_key_s_own_requests(recorded):
    [row] = recorded.stats("alice", 86400)
    assert (row["group"], row["requests"], row["total_tokens"]) == ("alice", 3, 70)
    assert recorded.stats("nobody", 86400)[0]["requests"] == 0


def test_budget_usage_counts_today_and_this_month(recorded):
    used = recorded.budget_usage("alice")
    # 13 h ago is 2025-12-31: neither today nor this month
    assert (used["requests_today"], used["tokens_this_month"]) == (2, 30)
    assert used["cost_this_month"] == pytest.approx(0.75)
    assert used["day_ends_at"] == NOW + 12 * 3600
    assert used["month_ends_at"] == 1769904000.0  # 2026-02-01


def test_recent_and_overview_show_no_other_key(recorded):
    assert {r["client_key_id"] for r in recorded.recent("alice", 10)} == {"alice"}
    assert len(recorded.recent("alice", 2)) == 2
    overview = recorded.overview("alice", 86400, recent=5)
    assert overview["total"]["requests"] == 3
    assert sum(p["requests"] for p in overview["series"]) == 3
    assert overview["by_model"] == [] and overview["by_backend"] == []
    assert {r["client_key_id"] for r in overview["recent"]} == {"alice"}


def test_month_edges():
    assert month_start(NOW) == 1767225600.0
    assert next_month(1764547200.0) == 1767225600.0  # December -> January
