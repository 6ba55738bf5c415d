"""Named client keys in the shared database: add, list, revoke; only hashes stored; every
instance's cache (refresh, bounded lookups of unknown keys); the model globs of a key."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from qwenproxy.edge.access import ClientAccess, key_id
from qwenproxy.edge.client_keys import (
    MISS_LOOKUPS_PER_S,
    ClientKeyStore,
    KeyStoreError,
    client_keys_table,
)
from qwenproxy.store import Database


class CountingDatabase:
    """The store's database, counting the reads that reach it."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self.engine = db.engine
        self.queries = 0

    def query(self, sql, params=None):
        self.queries += 1
        return self._db.query(sql, params)


def test_add_prints_a_new_key_and_stores_only_its_hash(database, tmp_path):
    store = ClientKeyStore(database)
    record, key = store.add("alice", requests_per_day=100, models=("qwen3-coder*",))
    assert key.startswith("qp-") and len(key) == 35
    assert (record.name, record.key_id, record.requests_per_day) == ("alice", key_id(key), 100)
    with database.engine.connect() as conn:
        rows = conn.execute(sa.select(client_keys_table)).all()
    assert len(rows) == 1
    assert key not in repr(rows) and key[3:] not in repr(rows)
    if database.is_sqlite:  # the database file itself (and its WAL) never holds the key
        for path in tmp_path.glob("qwenproxy-test.db*"):
            assert key.encode() not in path.read_bytes()
            assert key[3:].encode() not in path.read_bytes()


def test_keys_are_random_and_names_unique(database):
    store = ClientKeyStore(database)
    _, one = store.add("one")
    _, two = store.add("two")
    assert one != two
    with pytest.raises(KeyStoreError, match="already exists"):
        store.add("one")
    assert [r.name for r in store.all()] == ["one", "two"]


@pytest.mark.parametrize(
    ("name", "limits"),
    [
        ("", {}),
        ("has space", {}),
        ("-dash-first", {}),
        ("x" * 65, {}),
        ("ok", {"requests_per_day": 0}),
        ("ok", {"tokens_per_month": -5}),
        ("ok", {"cost_per_month": 0.0}),
    ],
)
def test_bad_names_and_limits_are_refused(database, name, limits):
    with pytest.raises(KeyStoreError):
        ClientKeyStore(database).add(name, **limits)
    assert ClientKeyStore(database).all() == []


def test_unknown_and_twice_revoked_names_are_refused(database):
    store = ClientKeyStore(database)
    with pytest.raises(KeyStoreError, match="no key named"):
        store.get("ghost")
    with pytest.raises(KeyStoreError, match="no key named"):
        store.revoke("ghost")
    store.add("alice")
    assert store.revoke("alice").revoked
    with pytest.raises(KeyStoreError, match="already revoked"):
        store.revoke("alice")


def test_a_key_added_on_one_instance_works_at_once_on_another(database):
    cli, instance = ClientKeyStore(database), ClientKeyStore(database)
    instance.refresh()
    record, key = cli.add("alice")
    assert instance.lookup(key) == record  # a miss of the cache: one bounded lookup
    assert instance.by_key_id(record.key_id) == record
    assert instance.lookup("qp-" + "x" * 32) is None


def test_a_revoked_key_is_refused_on_every_instance_after_its_refresh(database):
    cli = ClientKeyStore(database)
    _, key = cli.add("alice")
    instances = [ClientKeyStore(database) for _ in range(2)]
    for store in instances:
        store.refresh()
        assert store.lookup(key) is not None
    cli.revoke("alice")
    for store in instances:
        store.refresh()
        assert store.lookup(key) is None
        assert not store.any_live


def test_the_background_refresh_drops_a_revoked_key_within_the_interval(database):
    cli = ClientKeyStore(database)
    record, key = cli.add("alice")
    instance = ClientKeyStore(database, refresh_s=0.05)
    instance.start()
    try:
        assert instance.lookup(key) == record
        cli.revoke("alice")
        deadline = time.monotonic() + 5
        while instance.by_key_id(record.key_id) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert instance.lookup(key) is None
    finally:
        instance.stop()


def test_wrong_keys_do_not_query_the_database_per_request(database):
    counting = CountingDatabase(database)
    store = ClientKeyStore(counting)  # type: ignore[arg-type]
    store.refresh()
    before = counting.queries
    for _ in range(50):  # the same wrong key: remembered as a miss
        assert store.lookup("qp-wrong-key-000000000000000000000") is None
    assert counting.queries - before == 1
    for i in range(200):  # a flood of different wrong keys: a bounded number of lookups
        assert store.lookup(f"qp-guess-{i:026d}") is None
    assert counting.queries - before <= MISS_LOOKUPS_PER_S + 2


def test_admin_keys_and_named_keys_are_told_apart(database):
    store = ClientKeyStore(database)
    record, key = store.add("alice")
    store.refresh()
    access = ClientAccess(("admin-key",), named=store)
    admin = access.identify({"Authorization": "Bearer admin-key"}, "192.0.2.1")
    assert admin.admin and admin.client_id == key_id("admin-key")
    named = access.identify({"x-api-key": key}, "192.0.2.1")
    assert not named.admin and named.client_key == record and named.client_id == record.key_id


def test_with_named_keys_and_no_admin_key_every_request_needs_a_key(database):
    store = ClientKeyStore(database)
    access = ClientAccess((), named=store)
    local = {"Host": "127.0.0.1:8000"}
    assert access.identify(local, "127.0.0.1").admin  # no key anywhere: loopback serves
    _, key = store.add("alice")
    store.refresh()
    with pytest.raises(Exception) as refused:
        access.identify(local, "127.0.0.1")
    assert refused.value.status == 401
    assert not access.identify({**local, "x-api-key": key}, "127.0.0.1").admin
