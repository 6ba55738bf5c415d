"""/usage/stats, /usage/recent, /metrics and /dashboard: answers, parameter errors in the
OpenAI error shape, the proxy key (never as ?key=), and a dashboard page that is
self-contained."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from flask import Flask

from qwenproxy.api import dashboard, usage
from qwenproxy.api.errors import register_error_handlers
from qwenproxy.edge.access import ClientAccess
from qwenproxy.edge.client_keys import ClientKeyStore
from qwenproxy.edge.dashboard_login import DashboardSessions, LoginThrottle
from qwenproxy.ledger.key_usage import KeyUsage
from qwenproxy.ledger.metrics import Metrics
from qwenproxy.ledger.writer import NullLedger, UsageLedger, UsageRecord
from qwenproxy.store import Database

NOW = 1767225600.0  # 2026-01-01T00:00:00Z
KEY = {"Authorization": "Bearer sk-proxy-1"}


def make_app(
    ledger, metrics: Metrics, keys: tuple[str, ...] = (), store: ClientKeyStore | None = None
) -> Flask:
    """The usage and dashboard blueprints over `ledger`, with admin `keys` and named keys
    from `store` (a ClientKeyStore on the ledger's database)."""
    db = getattr(ledger, "_db", None)
    app = Flask("usage-test")
    app.extensions["qwenproxy"] = SimpleNamespace(
        ledger=ledger,
        metrics=metrics,
        access=ClientAccess(keys, named=store),
        upkeep=None,
        key_usage=KeyUsage(db, clock=lambda: NOW, enabled=db is not None),
        dashboard_sessions=DashboardSessions(lambda: b"s" * 32, 3600.0),
        login_throttle=LoginThrottle(),
    )
    register_error_handlers(app)
    app.register_blueprint(usage.bp)
    app.register_blueprint(dashboard.bp)
    return app


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[UsageLedger]:
    db = Database(f"sqlite:///{tmp_path / 'usage.db'}")
    ledger = UsageLedger(db, clock=lambda: NOW)
    rows = [
        dict(offset=60, backend="qwen-oauth", model="coder-model", status=200, p=100, c=50),
        dict(offset=120, backend="qwen-oauth", model="coder-model", status=200, p=10, c=5),
        dict(offset=600, backend="dashscope", model="qwen3-coder-plus", status=502, p=0, c=0),
        dict(offset=3 * 86400, backend="dashscope", model="qwen3-coder-plus", status=200, p=1, c=1),
    ]
    for i, row in enumerate(rows):
        ledger.record(
            UsageRecord(
                started_at=NOW - row["offset"],
                session_id=f"s{i % 2}",
                client_key_id="k1",
                backend=row["backend"],
                upstream_model=row["model"],
                requested_model=row["model"],
                status=row["status"],
                prompt_tokens=row["p"],
                completion_tokens=row["c"],
                latency_ms=100.0 * (i + 1),
                ttft_ms=20.0 if i == 0 else None,
                stream=i == 0,
            )
        )
    ledger.flush()
    yield ledger
    ledger.close()
    db.dispose()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def client(ledger, metrics):
    return make_app(ledger, metrics).test_client()


@pytest.fixture
def keyed(ledger, metrics):
    return make_app(ledger, metrics, keys=("sk-proxy-1",)).test_client()


# --- /usage/stats and /usage/recent ------------------------------------------------------


def test_stats_default_to_the_last_24_hours_in_one_group(client):
    response = client.get("/usage/stats")
    assert response.status_code == 200
    body = response.json
    assert (body["since"], body["since_s"], body["group_by"], body["accounting"]) == (
        "24h",
        86400.0,
        None,
        True,
    )
    [total] = body["data"]
    assert (total["group"], total["requests"], total["errors"]) == ("all", 3, 1)
    assert (total["prompt_tokens"], total["completion_tokens"]) == (110, 55)


@pytest.mark.parametrize(
    ("group_by", "groups"),
    [
        ("model", {"coder-model": 2, "qwen3-coder-plus": 1}),
        ("backend", {"qwen-oauth": 2, "dashscope": 1}),
        ("session", {"s0": 2, "s1": 1}),
        ("key", {"k1": 3}),
        ("day", {"2025-12-31": 3}),
    ],
)
def test_stats_group_by(client, group_by, groups):
    body = client.get(f"/usage/stats?group_by={group_by}").json
    assert body["group_by"] == group_by
    assert {row["group"]: row["requests"] for row in body["data"]} == groups


# Windows count whole minutes: 90s reaches back to the start of the minute 90 s ago.
@pytest.mark.parametrize(
    ("since", "requests"), [("50s", 1), ("90s", 2), ("30m", 3), ("1h", 3), ("7d", 4)]
)
def test_stats_since(client, since, requests):
    assert client.get(f"/usage/stats?since={since}").json["data"][0]["requests"] == requests


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("since=yesterday", "since"),
        ("since=-5m", "since"),
        ("since=0", "since"),
        ("group_by=prompt", "group_by"),
    ],
)
def test_bad_stats_parameters_are_400_in_the_openai_shape(client, query, param):
    response = client.get(f"/usage/stats?{query}")
    assert response.status_code == 400
    error = response.json["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "invalid_request",
        param,
    )
    assert error["message"]


def test_recent_is_newest_first_with_a_limit(client):
    body = client.get("/usage/recent?limit=2").json
    assert body["object"] == "list"
    assert [row["latency_ms"] for row in body["data"]] == [100.0, 200.0]
    assert len(client.get("/usage/recent").json["data"]) == 4


@pytest.mark.parametrize("limit", ["0", "1001", "ten", "-1"])
def test_recent_limit_must_be_1_to_1000(client, limit):
    response = client.get(f"/usage/recent?limit={limit}")
    assert response.status_code == 400
    assert response.json["error"]["param"] == "limit"


def test_with_accounting_off_the_endpoints_answer_empty(metrics):
    client = make_app(NullLedger(), metrics).test_client()
    assert client.get("/usage/stats?group_by=model").json["data"] == []
    assert client.get("/usage/stats").json["accounting"] is False
    assert client.get("/usage/recent").json["data"] == []
    page = client.get("/dashboard").get_data(as_text=True)
    assert "Accounting is turned off" in page


# --- /metrics -----------------------------------------------------------------------------


def test_metrics_are_prometheus_text(client, metrics):
    metrics.observe(
        UsageRecord(
            started_at=NOW,
            backend="qwen-oauth",
            upstream_model="coder-model",
            latency_ms=10.0,
            prompt_tokens=7,
        )
    )
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    text = response.get_data(as_text=True)
    assert (
        'qwenproxy_requests_total{backend="qwen-oauth",model="coder-model",status="200"} 1.0'
        in text
    )
    assert "qwenproxy_active_streams 0.0" in text


# --- the proxy key -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/usage/stats", "/usage/recent", "/metrics", "/dashboard"])
def test_every_route_needs_the_key_when_keys_are_set(keyed, path):
    response = keyed.get(path)
    assert response.status_code == 401
    if path == "/dashboard":  # a browser gets the login form
        assert response.mimetype == "text/html"
        assert '<form method="post" action="/dashboard/login">' in response.get_data(as_text=True)
    else:
        assert response.json["error"]["code"] == "invalid_api_key"
    assert keyed.get(path, headers=KEY).status_code == 200
    assert keyed.get(path, headers={"x-api-key": "sk-proxy-1"}).status_code == 200


def test_a_key_in_the_url_opens_nothing(keyed):
    for path in ("/dashboard?key=sk-proxy-1", "/usage/stats?key=sk-proxy-1"):
        assert keyed.get(path).status_code == 401
    # a wrong key in a header is an API client's mistake: JSON, not the form
    response = keyed.get("/dashboard", headers={"Authorization": "Bearer wrong"})
    assert (response.status_code, response.json["error"]["code"]) == (401, "invalid_api_key")


def test_without_keys_only_loopback_clients_may_look(client):
    remote = {"REMOTE_ADDR": "192.0.2.10"}
    for path in ("/usage/stats", "/metrics", "/dashboard", "/dashboard?key=anything"):
        assert client.get(path, environ_base=remote).status_code == 403
    assert client.get("/dashboard").status_code == 200


# --- the dashboard page ------------------------------------------------------------------


def test_dashboard_is_one_self_contained_page(client):
    response = client.get("/dashboard?since=7d")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert page.count("<svg") >= 4
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|@import|url\(", page, re.I)
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    for text in (
        "Requests",
        "Tokens",
        "Latency by model",
        "Errors by backend",
        "Recent requests",
        "coder-model",
        "qwen3-coder-plus",
        "dashscope",
    ):
        assert text in page


def test_dashboard_escapes_names_chosen_by_clients(tmp_path, metrics):
    db = Database(f"sqlite:///{tmp_path / 'evil.db'}")
    ledger = UsageLedger(db, clock=lambda: NOW)
    ledger.record(
        UsageRecord(
            started_at=NOW - 5,
            backend="b",
            upstream_model="<script>alert(1)</script>",
            session_id='"><img src=x>',
            latency_ms=1.0,
        )
    )
    ledger.flush()
    page = make_app(ledger, metrics).test_client().get("/dashboard").get_data(as_text=True)
    db.dispose()
    assert "<script>" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_dashboard_links_carry_no_key(keyed):
    page = keyed.get("/dashboard?since=1h", headers=KEY).get_data(as_text=True)
    assert 'href="?since=7d"' in page
    assert "key=" not in page and "sk-proxy-1" not in page


def test_dashboard_rejects_a_bad_period(client):
    response = client.get("/dashboard?since=forever")
    assert response.status_code == 400
    assert response.json["error"]["param"] == "since"



# --- named client keys: who sees what ----------------------------------------------------


@pytest.fixture
def named(ledger, metrics):
    """An app with an admin key and two named keys; alice has one request in the ledger."""
    store = ClientKeyStore(ledger._db)
    alice, alice_key = store.add("alice")
    bob, bob_key = store.add("bob")
    ledger.record(
        UsageRecord(
            started_at=NOW - 30,
            client_key_id=alice.key_id,
            backend="dashscope",
            upstream_model="qwen3-coder-plus",
            requested_model="qwen3-coder-plus",
            prompt_tokens=5,
            completion_tokens=2,
            latency_ms=10.0,
        )
    )
    ledger.flush()
    store.refresh()
    client = make_app(ledger, metrics, keys=("sk-proxy-1",), store=store).test_client()
    return SimpleNamespace(
        client=client,
        alice=alice,
        bob=bob,
        as_alice={"Authorization": f"Bearer {alice_key}"},
        as_bob={"x-api-key": bob_key},
    )


def test_a_named_key_reads_only_its_own_stats_and_rows(named):
    body = named.client.get("/usage/stats", headers=named.as_alice).json
    assert body["key_id"] == named.alice.key_id
    assert [(r["group"], r["requests"]) for r in body["data"]] == [(named.alice.key_id, 1)]
    rows = named.client.get("/usage/recent", headers=named.as_alice).json["data"]
    assert [r["client_key_id"] for r in rows] == [named.alice.key_id]
    assert named.client.get("/usage/recent", headers=named.as_bob).json["data"] == []
    # the admin still sees every row
    assert len(named.client.get("/usage/recent", headers=KEY).json["data"]) == 5


def test_a_named_key_gets_403_on_metrics_and_on_other_keys(named):
    for path in (
        "/metrics",
        f"/usage/stats?key_id={named.bob.key_id}",
        f"/usage/recent?key_id={named.bob.key_id}",
        "/usage/stats?group_by=model",
        "/usage/stats?group_by=session",
    ):
        response = named.client.get(path, headers=named.as_alice)
        assert response.status_code == 403, path
        assert response.json["error"]["type"] == "permission_error"
    assert named.client.get("/metrics", headers=KEY).status_code == 200
    own = f"/usage/stats?key_id={named.alice.key_id}"
    assert named.client.get(own, headers=named.as_alice).status_code == 200


def test_an_admin_may_read_one_key(named):
    body = named.client.get(f"/usage/stats?key_id={named.alice.key_id}", headers=KEY).json
    assert body["data"][0]["requests"] == 1


def test_the_dashboard_of_a_named_key_shows_only_its_requests(named):
    page = named.client.get("/dashboard", headers=named.as_alice).get_data(as_text=True)
    assert "key alice" in page
    assert named.alice.key_id in page
    assert "k1" not in page and "coder-model" not in page  # other keys' rows and models
    assert "Errors by backend" not in page


def test_with_named_keys_and_no_admin_key_nobody_reads_everything(ledger, metrics):
    store = ClientKeyStore(ledger._db)
    _, key = store.add("alice")
    store.refresh()
    client = make_app(ledger, metrics, store=store).test_client()
    assert client.get("/usage/stats").status_code == 401  # loopback needs a key now
    response = client.get("/metrics", headers={"x-api-key": key})
    assert response.status_code == 403
    assert "set PROXY_API_KEY" in response.json["error"]["message"]
    assert client.get("/usage/stats", headers={"x-api-key": key}).status_code == 200
