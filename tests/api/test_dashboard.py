"""The dashboard in a browser: a login form (no key in any URL), a signed, expiring,
HttpOnly, SameSite=Strict session cookie, log-out, CSRF checks, a throttle on wrong keys,
and sessions that end with their key."""

from __future__ import annotations

import pytest

from qwenproxy.config.secrets import key_id
from qwenproxy.edge.client_keys import ClientKeyStore
from qwenproxy.edge.dashboard_login import COOKIE_NAME, MAX_FAILURES, DashboardSessions
from tests.api.test_usage import KEY, ledger, make_app, metrics  # noqa: F401 - fixtures

SAME_ORIGIN = {"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"}


@pytest.fixture
def store(ledger):  # noqa: F811
    return ClientKeyStore(ledger._db)


@pytest.fixture
def app(ledger, metrics, store):  # noqa: F811
    return make_app(ledger, metrics, keys=("sk-proxy-1",), store=store)


def login(client, key: str, headers=SAME_ORIGIN, **kwargs):
    return client.post("/dashboard/login", data={"key": key}, headers=headers, **kwargs)


def test_a_browser_without_a_session_gets_the_login_form(app):
    response = app.test_client().get("/dashboard")
    assert response.status_code == 401
    page = response.get_data(as_text=True)
    assert 'method="post"' in page and 'name="key"' in page and 'type="password"' in page
    assert "form-action 'self'" in response.headers["Content-Security-Policy"]


def test_logging_in_sets_a_strict_http_only_cookie_without_the_key(app):
    client = app.test_client()
    response = login(client, "sk-proxy-1")
    assert response.status_code == 303 and response.headers["Location"] == "/dashboard"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/dashboard", "Max-Age=3600"):
        assert attribute in cookie
    assert "Secure" not in cookie  # plain http here
    assert "sk-proxy-1" not in cookie
    page = client.get("/dashboard?since=1h")
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert "Recent requests" in text and "Log out" in text
    assert "key=" not in text and "sk-proxy-1" not in text


def test_the_cookie_is_secure_over_https(app):
    response = login(
        app.test_client(),
        "sk-proxy-1",
        headers={"Origin": "https://localhost"},
        base_url="https://localhost",
    )
    assert "Secure" in response.headers["Set-Cookie"]


def test_a_wrong_key_gets_the_form_again_with_401_and_guessing_is_throttled(app):
    client = app.test_client()
    response = login(client, "sk-wrong")
    assert response.status_code == 401
    assert "not valid" in response.get_data(as_text=True)
    assert "Set-Cookie" not in response.headers
    for _ in range(MAX_FAILURES - 1):
        assert login(client, "sk-wrong").status_code == 401
    throttled = login(client, "sk-proxy-1")  # even the right key waits now
    assert throttled.status_code == 429
    assert int(throttled.headers["Retry-After"]) > 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_a_login_posted_from_another_site_is_refused(app, headers):
    response = login(app.test_client(), "sk-proxy-1", headers=headers)
    assert response.status_code == 403
    assert response.json["error"]["code"] == "forbidden"
    assert "Set-Cookie" not in response.headers


def test_logging_out_clears_the_cookie(app):
    client = app.test_client()
    login(client, "sk-proxy-1")
    response = client.post("/dashboard/logout", headers=SAME_ORIGIN)
    assert response.status_code == 303
    assert f"{COOKIE_NAME}=;" in response.headers["Set-Cookie"]
    assert client.get("/dashboard").status_code == 401


@pytest.mark.parametrize("tamper", ["expired", "edited", "foreign", "unknown key"])
def test_expired_or_tampered_cookies_are_refused(app, tamper):
    admin = key_id("sk-proxy-1")
    secret = lambda: b"s" * 32  # noqa: E731 - the app's secret (make_app)
    value = DashboardSessions(secret, 3600.0).issue(admin)
    _, expiry, signature = value.split(".")
    forged = {
        "expired": DashboardSessions(secret, 60.0, clock=lambda: 1000.0).issue(admin),
        "edited": f"{admin}.{int(expiry) + 99}.{signature}",
        "foreign": DashboardSessions(lambda: b"x" * 32, 3600.0).issue(admin),
        "unknown key": DashboardSessions(secret, 3600.0).issue("b0b0b0b0b0b0"),
    }[tamper]
    client = app.test_client()
    client.set_cookie(COOKIE_NAME, value, path="/dashboard")
    assert client.get("/dashboard").status_code == 200  # the genuine one opens it
    client.set_cookie(COOKIE_NAME, forged, path="/dashboard")
    assert client.get("/dashboard").status_code == 401


def test_a_revoked_key_loses_its_session(app, store):
    record, key = store.add("alice")
    client = app.test_client()
    assert login(client, key).status_code == 303
    assert "key alice" in client.get("/dashboard").get_data(as_text=True)
    store.revoke("alice")
    store.refresh()
    assert client.get("/dashboard").status_code == 401
