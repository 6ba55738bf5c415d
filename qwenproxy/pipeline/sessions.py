"""Per-client session state (model/backend overrides, one-off, guard toggles), kept in the
shared database so every worker and restart sees it. Idle sessions expire.
A session is named by `X-Session-ID`, scoped to the client's key id, so two clients never
share one; without the header, each key (or the loopback user) has one session.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import orjson

from qwenproxy.pipeline.input_rules import check_name, name_problem
from qwenproxy.store import (
    Database,
    KeyValueTable,
    database_errors,
    dumps,
    sessions_table,
)

SESSION_ID_COLUMN = 128  # qp_sessions.id
SESSION_HASH_MARK = "~"
NAMED_FIELDS = ("model", "backend", "oneoff")  # session fields that hold names


def session_id_for(client_id: str, header: str | None) -> str:
    """The stored id of the session `X-Session-ID` names: `<key id>/<header>`. A header
    may be a name of up to MAX_NAME_CHARS printable characters (`input_rules`); one too
    long for the id column is kept as `<key id>/~<sha256 of it>`."""
    if header is None or not header.strip():
        return client_id
    value = check_name(header.strip(), "X-Session-ID", "X-Session-ID")
    session_id = f"{client_id}/{value}"
    if len(session_id) <= SESSION_ID_COLUMN:
        return session_id
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{client_id}/{SESSION_HASH_MARK}{digest}"


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


def _valid_names(state: SessionState) -> SessionState:
    """A stored state without the names today's rules refuse (a session set before the
    rules existed, e.g. to a model with a line break): those count as unset."""
    bad = {}
    for name in NAMED_FIELDS:
        value = getattr(state, name)
        if value is not None and name_problem(value, name) is not None:
            bad[name] = None
    return state.changed(**bad) if bad else state


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
        state = _valid_names(SessionState(**orjson.loads(raw)))
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
