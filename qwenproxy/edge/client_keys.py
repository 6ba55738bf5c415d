"""Named client keys (`python -m qwenproxy keys ...`): one row per key in `qp_client_keys`
of the shared database, holding the key's SHA-256 (never the key: keys are 192-bit random,
so a plain hash cannot be searched), its id in the ledger (`config.values.key_id`) and its budgets
and model globs. Every instance keeps the live keys in memory, reloaded from the database
every CLIENT_KEYS_REFRESH seconds in the background, so a revocation holds on every
instance within that interval; a key the cache does not know (added a moment ago on
another instance) is looked up once, with misses remembered and the lookups per second
bounded, so a flood of wrong keys cannot put one query per request on the database.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from qwenproxy.background import BackgroundLoop
from qwenproxy.config.secrets import key_id as key_id_of
from qwenproxy.store import Database, describe_db_error, metadata

log = logging.getLogger(__name__)

KEY_PREFIX = "qp-"
KEY_RANDOM_BYTES = 24  # 32 url-safe characters
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
MISS_CACHE_ENTRIES = 10000
MISS_LOOKUPS_PER_S = 20.0  # database lookups of unknown keys, per instance
MAX_KEYS = 100000  # what one refresh loads at most

client_keys_table = sa.Table(
    "qp_client_keys",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("key_id", sa.String(12), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Column("requests_per_day", sa.BigInteger),
    sa.Column("tokens_per_month", sa.BigInteger),
    sa.Column("cost_per_month", sa.Float),
    sa.Column("models", sa.Text),  # comma-separated globs; NULL: every model
)

_COLUMNS = (
    "name, key_hash, key_id, created_at, revoked_at, requests_per_day, tokens_per_month, "
    "cost_per_month, models"
)
_LIVE_SQL = f"SELECT {_COLUMNS} FROM qp_client_keys WHERE revoked_at IS NULL LIMIT :limit"
_BY_HASH_SQL = f"SELECT {_COLUMNS} FROM qp_client_keys WHERE key_hash = :key_hash"


class KeyStoreError(ValueError):
    """A `keys` command that cannot be done (duplicate or unknown name, bad value)."""


@dataclass(frozen=True)
class ClientKey:
    """One named key as the request context carries it (`ctx.client_key`)."""

    name: str
    key_hash: str
    key_id: str
    created_at: float
    revoked_at: float | None = None
    requests_per_day: int | None = None
    tokens_per_month: int | None = None
    cost_per_month: float | None = None
    models: tuple[str, ...] = ()  # globs; empty: every model

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def allows_model(self, *names: str | None) -> bool:
        """Whether any of `names` (a model as the client named it, as the backend calls
        it, `backend:model`) matches one of the key's globs (case-sensitive)."""
        if not self.models:
            return True
        return any(
            name and fnmatch.fnmatchcase(name, glob) for name in names for glob in self.models
        )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


def parse_models(text: str | None) -> tuple[str, ...]:
    globs = tuple(part.strip() for part in (text or "").split(",") if part.strip())
    for glob in globs:
        if len(glob) > 200 or any(ch.isspace() for ch in glob):
            raise KeyStoreError(f"--models: {glob[:40]!r} is not a model name or glob")
    return globs


def _record(row: Sequence) -> ClientKey:
    return ClientKey(
        name=row[0],
        key_hash=row[1],
        key_id=row[2],
        created_at=float(row[3]),
        revoked_at=None if row[4] is None else float(row[4]),
        requests_per_day=None if row[5] is None else int(row[5]),
        tokens_per_month=None if row[6] is None else int(row[6]),
        cost_per_month=None if row[7] is None else float(row[7]),
        models=parse_models(row[8]),
    )


class ClientKeyStore:
    """The named keys: managed by the CLI, looked up on every request (from memory)."""

    def __init__(
        self,
        db: Database,
        refresh_s: float = 5.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._db = db
        self.refresh_s = refresh_s
        self._clock = clock
        self._monotonic = monotonic
        self._live: dict[str, ClientKey] = {}  # by key hash
        self._by_id: dict[str, ClientKey] = {}
        self._misses: dict[str, float] = {}  # key hash -> when the miss expires
        self._lookup_allowance = MISS_LOOKUPS_PER_S
        self._allowance_at = monotonic()
        self._loaded = False
        self._failing = False
        self._loop = BackgroundLoop("qwenproxy-client-keys")

    # --- the hot path ------------------------------------------------------------------

    @property
    def any_live(self) -> bool:
        """Whether named keys exist (as of the last refresh, or a lookup since)."""
        return bool(self._live)

    def lookup(self, presented: str) -> ClientKey | None:
        """The live key `presented` is, or None. Known keys are a dictionary read; an
        unknown one costs at most one bounded database lookup per refresh interval."""
        digest = hash_key(presented)
        found = self._live.get(digest)
        if found is not None:
            return found if hmac.compare_digest(found.key_hash, digest) else None
        now = self._monotonic()
        expires = self._misses.get(digest)
        if expires is not None and expires > now:
            return None
        if not self._may_look_up(now):
            return None
        try:
            rows = self._db.query(_BY_HASH_SQL, {"key_hash": digest})
        except sa.exc.SQLAlchemyError as exc:
            log.warning("looking up a client key failed: %s", describe_db_error(exc))
            return None
        record = _record(rows[0]) if rows else None
        if record is None or record.revoked:
            if len(self._misses) >= MISS_CACHE_ENTRIES:
                self._misses = {}
            self._misses[digest] = now + self.refresh_s
            return None
        self._live = {**self._live, digest: record}
        self._by_id = {**self._by_id, record.key_id: record}
        return record

    def _may_look_up(self, now: float) -> bool:
        """A token bucket of MISS_LOOKUPS_PER_S database lookups per second."""
        elapsed = now - self._allowance_at
        self._allowance_at = now
        self._lookup_allowance = min(
            MISS_LOOKUPS_PER_S, self._lookup_allowance + elapsed * MISS_LOOKUPS_PER_S
        )
        if self._lookup_allowance < 1:
            return False
        self._lookup_allowance -= 1
        return True

    def by_key_id(self, key_id: str) -> ClientKey | None:
        """The live key with this ledger id (a dashboard session names its key by id)."""
        return self._by_id.get(key_id)

    # --- keeping the cache fresh -------------------------------------------------------

    def refresh(self) -> None:
        """Reload the live keys from the database (revoked ones drop out)."""
        rows = self._db.query(_LIVE_SQL, {"limit": MAX_KEYS})
        live = {row[1]: _record(row) for row in rows}
        self._live = live
        self._by_id = {record.key_id: record for record in live.values()}
        self._misses = {}
        self._loaded = True

    def start(self) -> None:
        """Load the keys now and keep them fresh every `refresh_s` in the background."""
        self._refresh_logged()
        self._loop.start(self._run)

    def stop(self) -> None:
        self._loop.stop(timeout=5.0)

    def _run(self) -> None:
        while not self._loop.stopping.wait(self.refresh_s):
            self._refresh_logged()

    def _refresh_logged(self) -> None:
        try:
            self.refresh()
        except sa.exc.SQLAlchemyError as exc:
            if not self._failing:  # once per failure streak; the old keys stay in use
                log.warning("reloading the client keys failed: %s", describe_db_error(exc))
            self._failing = True
        else:
            if self._failing:
                log.info("client keys reloaded again")
            self._failing = False

    # --- the `keys` commands (not on the hot path: plain SQLAlchemy Core) ----------------

    def add(
        self,
        name: str,
        requests_per_day: int | None = None,
        tokens_per_month: int | None = None,
        cost_per_month: float | None = None,
        models: Sequence[str] = (),
    ) -> tuple[ClientKey, str]:
        """A new key named `name`: its record and the key itself (shown once)."""
        if not NAME_PATTERN.fullmatch(name):
            raise KeyStoreError(
                f"key name {name[:80]!r}: use 1 to 64 letters, digits and . _ @ - "
                "(starting with a letter or digit)"
            )
        for option, value in (
            ("--requests-per-day", requests_per_day),
            ("--tokens-per-month", tokens_per_month),
            ("--cost-per-month", cost_per_month),
        ):
            if value is not None and not value > 0:
                raise KeyStoreError(f"{option} must be a positive number, got {value}")
        key = new_key()
        record = ClientKey(
            name=name,
            key_hash=hash_key(key),
            key_id=key_id_of(key),
            created_at=self._clock(),
            requests_per_day=requests_per_day,
            tokens_per_month=tokens_per_month,
            cost_per_month=cost_per_month,
            models=tuple(models),
        )
        values = {
            "name": record.name,
            "key_hash": record.key_hash,
            "key_id": record.key_id,
            "created_at": record.created_at,
            "requests_per_day": requests_per_day,
            "tokens_per_month": tokens_per_month,
            "cost_per_month": cost_per_month,
            "models": ",".join(models) or None,
        }
        with self._db.engine.begin() as conn:
            taken = conn.execute(
                sa.select(client_keys_table.c.name).where(client_keys_table.c.name == name)
            ).first()
            if taken is not None:
                raise KeyStoreError(f"a key named {name!r} already exists")
            try:
                conn.execute(client_keys_table.insert().values(**values))
            except sa.exc.IntegrityError:
                raise KeyStoreError(f"a key named {name!r} already exists") from None
        return record, key

    def all(self) -> list[ClientKey]:
        """Every key, revoked ones too, by name."""
        table = client_keys_table
        with self._db.engine.connect() as conn:
            rows = conn.execute(
                sa.select(*(table.c[c.strip()] for c in _COLUMNS.split(","))).order_by(table.c.name)
            ).all()
        return [_record(row) for row in rows]

    def get(self, name: str) -> ClientKey:
        table = client_keys_table
        with self._db.engine.connect() as conn:
            row = conn.execute(
                sa.select(*(table.c[c.strip()] for c in _COLUMNS.split(","))).where(
                    table.c.name == name
                )
            ).first()
        if row is None:
            raise KeyStoreError(f"no key named {name!r} (see `python -m qwenproxy keys list`)")
        return _record(row)

    def revoke(self, name: str) -> ClientKey:
        """Mark the key revoked (its row stays, so the ledger's id keeps a name)."""
        record = self.get(name)
        if record.revoked:
            raise KeyStoreError(f"the key {name!r} is already revoked")
        table = client_keys_table
        with self._db.engine.begin() as conn:
            conn.execute(
                table.update()
                .where(table.c.name == name, table.c.revoked_at.is_(None))
                .values(revoked_at=self._clock())
            )
        # this instance forgets it at once; the others at their next refresh
        self._live = {h: r for h, r in self._live.items() if r.name != name}
        self._by_id = {i: r for i, r in self._by_id.items() if r.name != name}
        return self.get(name)
