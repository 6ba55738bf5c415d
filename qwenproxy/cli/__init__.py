"""`python -m qwenproxy`: serve, auth, doctor, usage and the other commands."""

from __future__ import annotations

import sys
from typing import Any


def open_database(config: Any, command: str) -> Any:
    """The configured database for a command (`usage`, `quota`, `keys`), or None after
    saying on stderr why it cannot be opened (the error's kind, never the URL)."""
    from qwenproxy.store import Database, default_database_url

    try:
        return Database(config.database_url or default_database_url(config.data_dir))
    except Exception as exc:  # SQLAlchemy / driver errors: say which, never the URL
        print(f"{command}: cannot open the database: {type(exc).__name__}", file=sys.stderr)
        return None
