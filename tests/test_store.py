"""KeyValueTable on SQLite and PostgreSQL: absent keys, insert-once, compare-and-set,
touch and expiry; and the schema is created idempotently."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from qwenproxy.store import Database, KeyValueTable, describe_db_error, sessions_table


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def updated_at(db: Database, key: str) -> float:
    with db.engine.connect() as conn:
        return conn.execute(
            sa.select(sessions_table.c.updated_at).where(sessions_table.c.id == key)
        ).scalar_one()


def test_absent_key_reads_as_none(database):
    assert KeyValueTable(database, sessions_table).get_raw("nobody") is None


def test_first_write_inserts_and_a_second_insert_of_the_same_key_loses(database):
    table = KeyValueTable(database, sessions_table)
    assert table.put_raw("s1", '{"a": 1}', expected=None) is True
    assert table.put_raw("s1", '{"a": 2}', expected=None) is False
    assert table.get_raw("s1") == '{"a": 1}'
    # the failed insert left the connection usable
    assert table.put_raw("s2", "{}", expected=None) is True


def test_compare_and_set_writes_only_over_the_expected_value(database):
    table = KeyValueTable(database, sessions_table)
    table.put_raw("s1", "v1", expected=None)
    assert table.put_raw("s1", "v2", expected="v1") is True
    assert table.put_raw("s1", "v3", expected="v1") is False
    assert table.get_raw("s1") == "v2"


def test_touch_moves_updated_at_and_old_rows_expire(database):
    clock = Clock(1000.0)
    table = KeyValueTable(database, sessions_table, clock)
    table.put_raw("old", "{}", expected=None)
    table.put_raw("kept", "{}", expected=None)
    clock.now = 2000.0
    table.touch("kept")
    assert updated_at(database, "kept") == 2000.0
    assert table.delete_older_than(1500.0) == 1
    assert table.get_raw("old") is None
    assert table.get_raw("kept") == "{}"


def test_opening_the_database_twice_keeps_its_rows(database_url):
    first = Database(database_url)
    KeyValueTable(first, sessions_table).put_raw("s1", "{}", expected=None)
    first.dispose()
    second = Database(database_url)
    assert KeyValueTable(second, sessions_table).get_raw("s1") == "{}"
    second.dispose()


def test_hot_path_read_gives_the_row_as_a_tuple_or_none(database):
    KeyValueTable(database, sessions_table, Clock(1000.0)).put_raw("s1", '{"a": 1}', None)
    sql = "SELECT state, updated_at FROM qp_sessions WHERE id = :id"
    assert database.fetch_row(sql, id="s1") == ('{"a": 1}', 1000.0)
    assert database.fetch_row(sql, id="nobody") is None


def test_a_failed_hot_path_read_is_a_sqlalchemy_error_and_the_pool_stays_usable(database):
    with pytest.raises(sa.exc.DBAPIError) as caught:
        database.fetch_row("SELECT state FROM qp_no_such_table WHERE id = :id", id="s1")
    assert "qp_no_such_table" in describe_db_error(caught.value)
    for _ in range(3):  # every pooled connection still reads (no transaction left aborted)
        assert database.fetch_row("SELECT id FROM qp_sessions WHERE id = :id", id="x") is None
    KeyValueTable(database, sessions_table).put_raw("s1", "{}", expected=None)
    assert KeyValueTable(database, sessions_table).get_raw("s1") == "{}"


def test_columns_added_since_a_table_was_made_are_added_at_start(tmp_path):
    import qwenproxy.ledger.aggregates  # noqa: F401 - registers qp_usage_agg

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # qp_usage_agg as a version without the cost counters made it
        conn.exec_driver_sql(
            "CREATE TABLE qp_usage_agg (dim VARCHAR(8), res VARCHAR(1), bucket BIGINT, grp TEXT,"
            " requests BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (dim, res, bucket, grp))"
        )
        conn.exec_driver_sql("INSERT INTO qp_usage_agg VALUES ('all', 'm', 60, '', 5)")
    engine.dispose()
    db = Database(url)
    with db.engine.connect() as conn:
        row = conn.exec_driver_sql("SELECT requests, cost_sum, cost_rows FROM qp_usage_agg").one()
    db.dispose()
    assert tuple(row) == (5, 0.0, 0)
