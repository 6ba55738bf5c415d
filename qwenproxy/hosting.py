"""Advice for a proxy hosted on a Heroku-style platform or a network address: what start-up
warns about once (gunicorn's master, `serving.py`) and what `doctor` adds. Plain text from
the configuration and the listening addresses; imports nothing heavy (the master loads it).
"""

from __future__ import annotations

import ipaddress

from qwenproxy.config import Config, Platform

# How each platform attaches PostgreSQL so that DATABASE_URL is set (sources: Heroku
# devcenter.heroku.com/articles/provisioning-heroku-postgres; Render
# render.com/docs/postgresql-creating-connecting; Railway docs.railway.com/guides/postgresql;
# Fly fly.io/docs/postgres/managing/attach-detach/; Dokku, which sets DYNO too,
# github.com/dokku/dokku-postgres).
ATTACH_POSTGRES = {
    "Heroku": "`heroku addons:create heroku-postgresql:essential-0` (Dokku: "
    "`dokku postgres:create qwenproxy-db && dokku postgres:link qwenproxy-db <app>`)",
    "Render": "create a Render PostgreSQL database and set DATABASE_URL to its internal URL",
    "Railway": "add a PostgreSQL service and set DATABASE_URL=${{Postgres.DATABASE_URL}} "
    "on this service",
    "Fly.io": "`fly postgres create`, then `fly postgres attach <db-app>`",
}


def is_loopback_host(host: str) -> bool:
    """Whether a listening host serves this machine only (`127.0.0.1`, `::1`, `localhost`)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a host name: it may well resolve to a public address


def no_key_warning(hosts: list[str]) -> str:
    return (
        f"qwenproxy: WARNING: listening on {', '.join(hosts)} without PROXY_API_KEY: every "
        "client that is not on this machine gets 403 until you set PROXY_API_KEY (clients "
        "then send it as `Authorization: Bearer <key>`)."
    )


def ephemeral_sqlite_warning(platform: Platform) -> str:
    return (
        f"qwenproxy: WARNING: running on {platform.name} ({platform.variable} is set) without "
        "DATABASE_URL: sessions, failover routes and the usage ledger are in SQLite on this "
        "instance's filesystem, which the platform wipes at every restart and deploy. Attach "
        f"PostgreSQL: {ATTACH_POSTGRES[platform.name]}."
    )


def startup_warnings(config: Config, hosts: list[str]) -> list[str]:
    """What start-up says once (not once per worker), for a server listening on `hosts`."""
    warnings = []
    exposed = [h for h in hosts if not is_loopback_host(h)]
    if exposed and not config.client_auth_enabled:
        warnings.append(no_key_warning(exposed))
    if config.platform is not None and not config.database_url:
        warnings.append(ephemeral_sqlite_warning(config.platform))
    return warnings


def doctor_notes(config: Config) -> list[str]:
    """Hosting advice for `doctor`. It runs as a command, not in a request, so what it can
    see is the configuration and the platform's variables, never a request's headers."""
    notes = []
    platform = config.platform
    if platform is not None and not config.database_url:
        notes.append(ephemeral_sqlite_warning(platform).removeprefix("qwenproxy: WARNING: "))
    if platform is not None and not config.trust_proxy_headers:
        notes.append(
            f"{platform.name} ({platform.variable} is set) puts its router in front of the "
            "proxy: set TRUST_PROXY_HEADERS=true so that the client address comes from the "
            "X-Forwarded-For entry the router adds."
        )
    if not config.client_auth_enabled and (
        platform is not None or not is_loopback_host(config.host)
    ):
        where = f"on {platform.name}" if platform is not None else f"on HOST={config.host}"
        notes.append(
            f"serving {where} without PROXY_API_KEY: every remote client gets 403; set "
            "PROXY_API_KEY."
        )
    return notes
