"""The databases the store and ledger tests run on: SQLite (a temp file) always, and
PostgreSQL when TEST_DATABASE_URL is set (`.ci/start_postgres.sh` prints one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import qwenproxy.container  # noqa: F401 - registers every table on `metadata`
from qwenproxy.store import Database, metadata

DATABASE_KINDS = ("sqlite", "postgresql")


def database_url_for(kind: str, tmp_path: Path) -> str:
    """A URL of an empty database of `kind`; skips the test when PostgreSQL is absent."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'qwenproxy-test.db'}"
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.skip("TEST_DATABASE_URL is not set (run .ci/start_postgres.sh)")
    db = Database(url)
    try:
        with db.engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
    finally:
        db.dispose()
    return url
