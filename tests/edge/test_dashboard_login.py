"""Dashboard sessions: signed, expiring cookie values naming a key id (never a key); one
secret shared through the database; the throttle on wrong keys."""

from __future__ import annotations

from qwenproxy.edge.dashboard_login import (
    MAX_FAILURES,
    DashboardSessions,
    LoginThrottle,
    shared_secret,
)
from qwenproxy.store import Database


def test_a_session_names_its_key_id_until_it_expires():
    now = [1000.0]
    sessions = DashboardSessions(lambda: b"k" * 32, ttl_s=60, clock=lambda: now[0])
    value = sessions.issue("855612296f59")
    assert value.startswith("855612296f59.1060.")
    assert sessions.verify(value) == "855612296f59"
    now[0] = 1060.0
    assert sessions.verify(value) is None


def test_tampered_or_foreign_values_are_refused():
    sessions = DashboardSessions(lambda: b"k" * 32)
    value = sessions.issue("aaaaaaaaaaaa")
    key_id, expiry, signature = value.split(".")
    other = DashboardSessions(lambda: b"z" * 32)
    for bad in (
        f"bbbbbbbbbbbb.{expiry}.{signature}",
        f"{key_id}.{int(expiry) + 3600}.{signature}",
        f"{key_id}.{expiry}.{signature[:-1]}A",
        other.issue("aaaaaaaaaaaa"),
        "",
        None,
        "garbage",
        "x" * 500,
    ):
        assert sessions.verify(bad) is None


def test_every_instance_reads_the_same_secret(database_url):
    first, second = Database(database_url), Database(database_url)
    try:
        secret = shared_secret(first, "dashboard_session")
        assert len(secret) == 32
        assert shared_secret(second, "dashboard_session") == secret
        one = DashboardSessions(lambda: shared_secret(first, "dashboard_session"))
        two = DashboardSessions(lambda: shared_secret(second, "dashboard_session"))
        assert two.verify(one.issue("aaaaaaaaaaaa")) == "aaaaaaaaaaaa"
    finally:
        first.dispose()
        second.dispose()


def test_the_throttle_stops_guessing_and_forgets_after_the_window():
    now = [0.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    for _ in range(MAX_FAILURES):
        assert throttle.retry_after("192.0.2.1") == 0
        throttle.failed("192.0.2.1")
    assert throttle.retry_after("192.0.2.1") == 600
    assert throttle.retry_after("192.0.2.2") == 0  # per address
    now[0] = 601.0
    assert throttle.retry_after("192.0.2.1") == 0
