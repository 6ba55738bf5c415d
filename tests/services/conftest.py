"""Fixtures of the service tests: a database of each kind (see tests/databases.py), and
the upstream stack's loopback servers (tests/services/raw_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qwenproxy.services.store import Database
from tests.databases import DATABASE_KINDS, database_url_for
from tests.services.raw_server import ca, http, serve  # noqa: F401 - fixtures


@pytest.fixture(params=DATABASE_KINDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url_for(request.param, tmp_path)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    yield db
    db.dispose()
