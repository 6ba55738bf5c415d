"""The dashboard's browser login: a signed, expiring session cookie that holds a key's id
and expiry (never the key), signed with HMAC-SHA256 under a secret every instance shares
(made once, at random, and kept in `qp_proxy_secrets` of the shared database), and a
throttle on wrong keys per client address, so the form cannot be used to guess keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

import sqlalchemy as sa

from qwenproxy.store import Database, metadata

COOKIE_NAME = "qp_dashboard"
SECRET_NAME = "dashboard_session"
MAX_FAILURES = 10  # wrong keys per address in FAILURE_WINDOW_S
FAILURE_WINDOW_S = 600.0
THROTTLE_ENTRIES = 10000

secrets_table = sa.Table(
    "qp_proxy_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


def shared_secret(db: Database, name: str, clock: Callable[[], float] = time.time) -> bytes:
    """The secret called `name`, made at random by the first instance that needs it."""
    table = secrets_table
    with db.engine.begin() as conn:
        value = conn.execute(sa.select(table.c.value).where(table.c.name == name)).scalar()
    if value is None:
        try:
            with db.engine.begin() as conn:
                conn.execute(
                    table.insert().values(
                        name=name, value=secrets.token_hex(32), created_at=clock()
                    )
                )
        except sa.exc.IntegrityError:  # another instance made it first: theirs stands
            pass
        with db.engine.begin() as conn:
            value = conn.execute(sa.select(table.c.value).where(table.c.name == name)).scalar()
    return bytes.fromhex(value)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class DashboardSessions:
    """Session cookie values: `<key id>.<expiry epoch s>.<signature>`."""

    def __init__(
        self,
        secret: Callable[[], bytes],
        ttl_s: float = 12 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret_source = secret
        self._secret: bytes | None = None
        self.ttl_s = ttl_s
        self._clock = clock

    def _key(self) -> bytes:
        if self._secret is None:  # read (or made) on first use, not at start-up
            self._secret = self._secret_source()
        return self._secret

    def _signature(self, payload: str) -> str:
        return _b64(hmac.new(self._key(), payload.encode(), hashlib.sha256).digest())

    def issue(self, client_id: str) -> str:
        payload = f"{client_id}.{int(self._clock() + self.ttl_s)}"
        return f"{payload}.{self._signature(payload)}"

    def verify(self, value: str | None) -> str | None:
        """The key id a valid, unexpired cookie value names; None otherwise."""
        if not value or len(value) > 200:
            return None
        payload, _, signature = value.rpartition(".")
        client_id, _, expiry = payload.partition(".")
        if not client_id or not expiry.isdigit():
            return None
        if not hmac.compare_digest(signature, self._signature(payload)):
            return None
        if int(expiry) <= self._clock():
            return None
        return client_id


class LoginThrottle:
    """At most MAX_FAILURES wrong keys per client address in FAILURE_WINDOW_S (per
    instance); memory bounded by THROTTLE_ENTRIES addresses."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, list[float]] = {}

    def retry_after(self, address: str) -> float:
        """Seconds until `address` may try again (0: now)."""
        now = self._clock()
        recent = [t for t in self._failures.get(address, ()) if t > now - FAILURE_WINDOW_S]
        if len(recent) < MAX_FAILURES:
            return 0.0
        return recent[0] + FAILURE_WINDOW_S - now

    def failed(self, address: str) -> None:
        now = self._clock()
        if len(self._failures) >= THROTTLE_ENTRIES and address not in self._failures:
            self._failures = {}
        recent = [t for t in self._failures.get(address, ()) if t > now - FAILURE_WINDOW_S]
        self._failures[address] = [*recent, now][-MAX_FAILURES:]

    def succeeded(self, address: str) -> None:
        self._failures.pop(address, None)
