"""Per-client session state (model/backend overrides, one-off, guard toggles), kept in the
shared database so every worker and restart sees it. Idle sessions expire.
A session is named by `X-Session-ID`, scoped to the client's key id, so two clients never
share one; without the header, each key (or the loopback user) has one session.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import orjson

from qwenproxy.errors import InvalidRequestError
from qwenproxy.services.store import (
    Database,
    KeyValueTable,
    database_errors,
    dumps,
    sessions_table,
)

MAX_SESSION_HEADER = 100  # with the 12-character key id and "/", ids fit the 128 column


def session_id_for(client_id: str, header: str | None) -> str:
    if header is None or not header.strip():
        return client_id
    value = header.strip()
    if len(value) > MAX_SESSION_HEADER or not value.isprintable():
        raise InvalidRequestError(
            f"X-Session-ID must be at most {MAX_SESSION_HEADER} printable characters.",
            param="X-Session-ID",
        )
    return f"{client_id}/{value}"


@dataclass(frozen=True)
class SessionState:
    model: str | None = None
    backend: str | None = None
    oneoff: str | None = None
    redact_api_keys: bool | None = None
    loop_detection: bool | None = None

    def changed(self, **changes: object) -> SessionState:
        return replace(self, **changes)


@dataclass(frozen=True)
class LoadedSession:
    id: str
    state: SessionState
    raw: str | None  # the stored JSON (for compare-and-set); None when not stored
    updated_at: float | None


class SessionStore:
    def __init__(self, db: Database, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._table = KeyValueTable(db, sessions_table, clock)
        self._ttl = ttl
        self._clock = clock
        self._last_purge = 0.0

    def load(self, session_id: str) -> LoadedSession:
        with database_errors("reading the session"):
            row = self._db.fetch_row(
                "SELECT state, updated_at FROM qp_sessions WHERE id = :id", id=session_id
            )
        if row is None:
            return LoadedSession(session_id, SessionState(), None, None)
        raw, updated_at = row
        if updated_at < self._clock() - self._ttl:  # expired: start afresh
            return LoadedSession(session_id, SessionState(), raw, updated_at)
        state = SessionState(**orjson.loads(raw))
        return LoadedSession(session_id, state, raw, updated_at)

    def save(self, loaded: LoadedSession, state: SessionState) -> LoadedSession | None:
        """Store `state` if nobody changed the session since `loaded` (compare-and-set):
        the session as now stored, or None when another request changed it first."""
        raw = dumps(asdict(state))
        with database_errors("saving the session"):
            if not self._table.put_raw(loaded.id, raw, loaded.raw):
                return None
            self._purge_now_and_then()
        return LoadedSession(loaded.id, state, raw, self._clock())

    def touch_if_stale(self, loaded: LoadedSession) -> None:
        """Keep a used session alive without writing on every request."""
        if loaded.updated_at is None:
            return
        if self._clock() - loaded.updated_at > min(self._ttl / 10, 3600):
            with database_errors("saving the session"):
                self._table.touch(loaded.id)

    def _purge_now_and_then(self) -> None:
        now = self._clock()
        if now - self._last_purge > 600:
            self._last_purge = now
            self._table.delete_older_than(now - self._ttl)
