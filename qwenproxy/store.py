"""The shared database (SQLAlchemy Core): sessions and failover routes, and the tables
other services add to `metadata` (the usage ledger). SQLite in WAL mode by default;
PostgreSQL with the same code, so several workers or instances share one state.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy import event

from qwenproxy.background import run_off_hub
from qwenproxy.errors import ServiceUnavailableError

log = logging.getLogger(__name__)
metadata = sa.MetaData()
T = TypeVar("T")
# A read on the ledger's side connections may run this long before PostgreSQL cancels it.
STATEMENT_TIMEOUT_MS = 10000

sessions_table = sa.Table(
    "qp_sessions",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False, index=True),
)

routes_table = sa.Table(
    "qp_failover_routes",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("policy", sa.String(8), nullable=False),
    sa.Column("elements", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)


def describe_db_error(exc: BaseException) -> str:
    """Class and first line of a database error, without the statement or its parameters."""
    original = getattr(exc, "orig", None) or exc
    first_line = (str(original).strip().splitlines() or [""])[0][:300]
    return f"{type(original).__name__}: {first_line}" if first_line else type(original).__name__


@contextmanager
def database_errors(what: str, code: str = "database_unavailable") -> Iterator[None]:
    """Turn a database failure into a 503 that says what could not be done."""
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        log.warning("%s failed: %s", what, describe_db_error(exc))
        raise ServiceUnavailableError(
            f"The proxy's database is unavailable ({what}); see the proxy log.", code=code
        ) from None


def default_database_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'qwenproxy.db'}"


class Database:
    """One engine per process; schema created idempotently at start-up."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._sql_cache: dict[str, str] = {}
        self._side: list[sqlite3.Connection] = []  # idle connections of `offload`
        self._sqlite_path: str | None = None
        if self.is_sqlite:
            path = sa.engine.make_url(url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._sqlite_path = path or ":memory:"
            self.engine = sa.create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": 30},
                pool_pre_ping=False,
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        self._create_schema()

    def _create_schema(self, tries: int = 20) -> None:
        """Create missing tables. Several workers starting at once race between checking
        and creating ("already exists", "database is locked"): the loser tries again."""
        for attempt in range(tries):
            try:
                metadata.create_all(self.engine, checkfirst=True)
                self._add_missing_columns()
                return
            except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
                if attempt == tries - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _add_missing_columns(self) -> None:
        """Tables made by an older version lack the columns added since (nullable ones, or
        counters with a default): add them (`ALTER TABLE ... ADD COLUMN` rewrites no row on
        SQLite or PostgreSQL 11+)."""
        inspector = sa.inspect(self.engine)
        preparer = self.engine.dialect.identifier_preparer
        for table in metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                default = column.server_default
                if column.name in present or not (column.nullable or default is not None):
                    continue
                kind = column.type.compile(dialect=self.engine.dialect)
                if not column.nullable:  # a counter: existing rows start at its default
                    kind += f" NOT NULL DEFAULT {default.arg}"  # type: ignore[union-attr]
                with self.engine.begin() as conn:
                    conn.exec_driver_sql(
                        f"ALTER TABLE {preparer.quote(table.name)} "
                        f"ADD COLUMN {preparer.quote(column.name)} {kind}"
                    )
                log.info("database: added column %s.%s", table.name, column.name)

    def dispose(self) -> None:
        self.engine.dispose()
        while self._side:
            self._side.pop().close()

    # --- work that must not hold the gevent hub ------------------------------------------

    def offload(self, work: Callable[[Any], T]) -> T:
        """Run `work(connection)` on a DBAPI connection without holding the gevent hub for
        the database's time. SQLite's calls block the calling thread, so under gevent they
        run in the hub's pool of native threads, on connections of their own (no SQLAlchemy
        in those threads); psycopg 3 waits cooperatively under gevent (from 3.1.14, source:
        psycopg/psycogreen's README), so PostgreSQL work runs in place on a pooled
        connection. `work` uses `:name` placeholders through `sql()`; it commits what it
        writes. Driver errors come out as SQLAlchemy's, for `database_errors`."""
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        try:
            if self.is_sqlite:
                return run_off_hub(self._on_side_connection, work)
            conn = self.engine.raw_connection()
            try:
                return work(conn)
            finally:
                conn.close()  # back to the pool, which rolls back what was not committed
        except dbapi_error as exc:
            raise self._wrapped(exc, None, None, False) from exc

    def _on_side_connection(self, work: Callable[[Any], T]) -> T:
        try:
            conn = self._side.pop()
        except IndexError:
            conn = sqlite3.connect(self._sqlite_path, timeout=30, check_same_thread=False)
            _sqlite_pragmas(conn, None)
        try:
            result = work(conn)
        except BaseException:
            conn.rollback()
            conn.close()
            raise
        conn.rollback()  # a read's implicit transaction ends here; writes were committed
        self._side.append(conn)
        return result

    def query(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """The rows of one read (`:name` placeholders), through `offload`."""
        statement = self._driver_sql(sql)

        def work(conn: Any) -> list[tuple[Any, ...]]:
            cursor = conn.cursor()
            try:
                self._limit_statement_time(cursor)
                cursor.execute(statement, dict(params or {}))
                return cursor.fetchall()
            finally:
                cursor.close()

        return self.offload(work)

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        """One write, committed, through `offload`; the rows it touched."""
        statement = self._driver_sql(sql)

        def work(conn: Any) -> int:
            cursor = conn.cursor()
            try:
                cursor.execute(statement, dict(params or {}))
                count = cursor.rowcount
            finally:
                cursor.close()
            conn.commit()
            return count

        return self.offload(work)

    def sql(self, text: str) -> str:
        """`text` with `:name` placeholders in the driver's own style."""
        return self._driver_sql(text)

    def _limit_statement_time(self, cursor: Any) -> None:
        """Let PostgreSQL cancel a runaway read of this transaction (SQLite has no timer)."""
        if not self.is_sqlite:
            cursor.execute(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")

    def fetch_row(self, sql: str, **params: Any) -> tuple[Any, ...] | None:
        """One row (a plain tuple, columns in SELECT order) of a hot-path read by key, on a
        pooled DBAPI connection: a third of the cost of `exec_driver_sql`, a tenth of a Core
        SELECT. `sql` uses `:name` placeholders. Driver errors are raised as SQLAlchemy's
        (`database_errors` turns them into a 503), and a connection lost on the way is
        dropped from the pool, as a `Connection` would do."""
        statement = self._driver_sql(sql)
        dialect = self.engine.dialect
        dbapi_error = dialect.loaded_dbapi.Error
        try:
            conn = self.engine.raw_connection()
        except dbapi_error as exc:
            raise self._wrapped(exc, None, None, dialect.is_disconnect(exc, None, None)) from exc
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(statement, params)
                return cursor.fetchone()
            finally:
                cursor.close()
        except dbapi_error as exc:
            lost = dialect.is_disconnect(exc, conn.dbapi_connection, None)
            if lost:
                conn.invalidate(exc)
            raise self._wrapped(exc, statement, params, lost) from exc
        finally:
            conn.close()  # back to the pool, which rolls the read's transaction back

    def _wrapped(
        self, exc: Exception, statement: str | None, params: Any, lost: bool
    ) -> sa.exc.StatementError:
        return sa.exc.DBAPIError.instance(
            statement,
            params,
            exc,
            self.engine.dialect.loaded_dbapi.Error,
            hide_parameters=self.engine.hide_parameters,
            connection_invalidated=lost,
            dialect=self.engine.dialect,
        )

    def _driver_sql(self, sql: str) -> str:
        cached = self._sql_cache.get(sql)
        if cached is None:
            cached = sql if self.is_sqlite else re.sub(r":(\w+)", r"%(\1)s", sql)
            self._sql_cache[sql] = cached
        return cached


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=30000")  # first: switching to WAL may wait for a lock
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class KeyValueTable:
    """JSON values by key in one of the tables above, with optimistic compare-and-set."""

    def __init__(
        self, db: Database, table: sa.Table, clock: Callable[[], float] = time.time
    ) -> None:
        self._db = db
        self._table = table
        self._clock = clock

    def get_raw(self, key: str) -> str | None:
        with self._db.engine.connect() as conn:
            return conn.execute(
                sa.select(self._table.c.state).where(self._table.c.id == key)
            ).scalar_one_or_none()

    def put_raw(self, key: str, value: str, expected: str | None) -> bool:
        """Write `value` if the stored value is still `expected` (None: absent)."""
        table = self._table
        now = self._clock()
        with self._db.engine.begin() as conn:
            if expected is None:
                try:
                    conn.execute(table.insert().values(id=key, state=value, updated_at=now))
                    return True
                except sa.exc.IntegrityError:
                    return False
            result = conn.execute(
                table.update()
                .where(table.c.id == key, table.c.state == expected)
                .values(state=value, updated_at=now)
            )
            return result.rowcount == 1

    def touch(self, key: str) -> None:
        with self._db.engine.begin() as conn:
            conn.execute(
                self._table.update().where(self._table.c.id == key).values(updated_at=self._clock())
            )

    def delete_older_than(self, cutoff: float) -> int:
        with self._db.engine.begin() as conn:
            result = conn.execute(self._table.delete().where(self._table.c.updated_at < cutoff))
            return result.rowcount


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
