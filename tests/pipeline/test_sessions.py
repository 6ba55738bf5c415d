"""Session ids from X-Session-ID, and stored states that today's input rules refuse."""

from __future__ import annotations

import pytest

from qwenproxy.errors import InvalidRequestError
from qwenproxy.pipeline.sessions import SessionState, SessionStore, session_id_for
from qwenproxy.store import dumps


def test_a_session_header_names_a_session_of_its_client():
    assert session_id_for("abc123", None) == "abc123"
    assert session_id_for("abc123", "  ") == "abc123"
    assert session_id_for("abc123", " work ") == "abc123/work"


def test_a_long_session_header_is_kept_under_its_hash_within_the_id_column():
    first = session_id_for("0123456789ab", "s" * 256)
    assert first.startswith("0123456789ab/~") and len(first) <= 128
    assert session_id_for("0123456789ab", "s" * 256) == first
    assert session_id_for("0123456789ab", "s" * 255 + "t") != first
    assert session_id_for("other-client", "s" * 256) != first


@pytest.mark.parametrize("header", ["s" * 257, "a\tb", "a\x85b"])
def test_a_session_header_that_is_too_long_or_unprintable_is_a_400(header):
    with pytest.raises(InvalidRequestError) as caught:
        session_id_for("abc123", header)
    assert caught.value.param == "X-Session-ID" and caught.value.code == "invalid_name"


def test_a_stored_name_the_rules_refuse_counts_as_unset(database):
    store = SessionStore(database, ttl=3600)
    loaded = store.load("k/poisoned")
    store.save(loaded, SessionState(model="ok-model", loop_detection=False))
    # As a session set before the rules existed would have been stored.
    database_state = dumps({"model": "ab\rcd", "backend": None, "oneoff": "x" * 1_000_000,
                            "redact_api_keys": None, "loop_detection": False})
    with database.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE qp_sessions SET state = ? WHERE id = ?"
                             if database.is_sqlite else
                             "UPDATE qp_sessions SET state = %s WHERE id = %s",
                             (database_state, "k/poisoned"))
    state = store.load("k/poisoned").state
    assert state == SessionState(model=None, oneoff=None, loop_detection=False)
