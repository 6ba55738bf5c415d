"""Hosting advice: the start-up warnings and doctor's notes, from the configuration."""

from __future__ import annotations

import pytest

from qwenproxy.config import Config
from qwenproxy.hosting import doctor_notes, is_loopback_host, startup_warnings


def config(**env: str) -> Config:
    return Config.from_env(env, dotenv_path=None)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("proxy.example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_a_network_bind_without_a_key_warns_that_remote_clients_get_403() -> None:
    [warning] = startup_warnings(config(), ["0.0.0.0"])
    assert "0.0.0.0" in warning and "PROXY_API_KEY" in warning and "403" in warning
    assert startup_warnings(config(PROXY_API_KEY="k1"), ["0.0.0.0"]) == []
    assert startup_warnings(config(), ["127.0.0.1", "::1"]) == []


def test_a_platform_without_database_url_warns_that_sqlite_is_lost_and_says_how_to_attach() -> None:
    warnings = startup_warnings(config(DYNO="web.1", PROXY_API_KEY="k1"), ["0.0.0.0"])
    [warning] = warnings
    assert "Heroku" in warning and "DYNO" in warning and "DATABASE_URL" in warning
    assert "restart" in warning and "heroku addons:create heroku-postgresql" in warning
    with_db = config(DYNO="web.1", PROXY_API_KEY="k1", DATABASE_URL="postgres://u@h/d")
    assert startup_warnings(with_db, ["0.0.0.0"]) == []
    for env, hint in (
        ({"RENDER": "true"}, "Render PostgreSQL"),
        ({"RAILWAY_ENVIRONMENT": "production"}, "${{Postgres.DATABASE_URL}}"),
        ({"FLY_APP_NAME": "qp"}, "fly postgres attach"),
    ):
        [warning] = startup_warnings(config(PROXY_API_KEY="k1", **env), ["0.0.0.0"])
        assert hint in warning


def test_doctor_notes_on_a_platform() -> None:
    notes = doctor_notes(config(RENDER="true"))
    assert len(notes) == 3
    assert "SQLite" in notes[0] and "DATABASE_URL" in notes[0]
    assert "TRUST_PROXY_HEADERS=true" in notes[1] and "X-Forwarded-For" in notes[1]
    assert "PROXY_API_KEY" in notes[2]
    settled = config(
        RENDER="true", DATABASE_URL="postgres://u@h/d", TRUST_PROXY_HEADERS="true",
        PROXY_API_KEY="k1",
    )
    assert doctor_notes(settled) == []


def test_doctor_notes_off_a_platform() -> None:
    assert doctor_notes(config()) == []
    [note] = doctor_notes(config(HOST="0.0.0.0"))
    assert "HOST=0.0.0.0" in note and "PROXY_API_KEY" in note
