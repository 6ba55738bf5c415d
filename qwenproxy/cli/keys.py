"""`python -m qwenproxy keys add|list|show|revoke`: named client keys in the shared
database (edge/client_keys.py). `add` prints the new key once and stores only its hash;
`show` reads the key's usage against each budget from the ledger aggregates. Database code
is imported when the command runs, so `serve` does not load it into gunicorn's master.
Exit codes: 0 done, 1 refused (duplicate or unknown name, bad value), 2 configuration.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import Any

from qwenproxy.config import Config
from qwenproxy.errors import ProxyError


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def add_keys_command(subparsers: Any) -> None:
    """Register `keys` on the `python -m qwenproxy` sub-command parser."""
    keys = subparsers.add_parser("keys", help="named client keys with budgets")
    commands = keys.add_subparsers(dest="keys_command", required=True)
    add = commands.add_parser("add", help="create a key (printed once)")
    add.add_argument("name")
    add.add_argument("--requests-per-day", type=_positive_int, metavar="N")
    add.add_argument("--tokens-per-month", type=_positive_int, metavar="N")
    add.add_argument("--cost-per-month", type=_positive_float, metavar="X")
    add.add_argument("--models", metavar="GLOB,...", help="models the key may use (globs)")
    add.set_defaults(handler=cmd_keys_add)
    listing = commands.add_parser("list", help="every key, with its budgets")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=cmd_keys_list)
    show = commands.add_parser("show", help="a key's usage against each budget")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=cmd_keys_show)
    revoke = commands.add_parser("revoke", help="revoke a key (on every instance)")
    revoke.add_argument("name")
    revoke.set_defaults(handler=cmd_keys_revoke)


def _store(config: Config) -> tuple[Any, Any]:
    import qwenproxy.container  # noqa: F401 - registers every table
    from qwenproxy.edge.client_keys import ClientKeyStore
    from qwenproxy.store import Database, default_database_url

    db = Database(config.database_url or default_database_url(config.data_dir))
    return db, ClientKeyStore(db, config.client_keys_refresh)


def _run(config: Config, work: Any) -> int:
    """`work(db, store)` with the store's refusals as one line on stderr (exit 1)."""
    import sqlalchemy as sa

    from qwenproxy.edge.client_keys import KeyStoreError

    try:
        db, store = _store(config)
    except sa.exc.SQLAlchemyError as exc:
        from qwenproxy.store import describe_db_error

        print(
            f"qwenproxy keys: the database is unavailable: {describe_db_error(exc)}",
            file=sys.stderr,
        )
        return 1
    try:
        return work(db, store)
    except (KeyStoreError, argparse.ArgumentTypeError) as exc:
        print(f"qwenproxy keys: {exc}", file=sys.stderr)
        return 1
    except ProxyError as exc:
        print(f"qwenproxy keys: {exc.message}", file=sys.stderr)
        return 1
    finally:
        db.dispose()


def _when(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(epoch_s, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _limit(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _as_dict(record: Any) -> dict[str, Any]:
    return {
        "name": record.name,
        "key_id": record.key_id,
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
        "requests_per_day": record.requests_per_day,
        "tokens_per_month": record.tokens_per_month,
        "cost_per_month": record.cost_per_month,
        "models": list(record.models),
    }


def cmd_keys_add(config: Config, args: argparse.Namespace) -> int:
    from qwenproxy.edge.client_keys import parse_models

    def work(_db: Any, store: Any) -> int:
        record, key = store.add(
            args.name,
            requests_per_day=args.requests_per_day,
            tokens_per_month=args.tokens_per_month,
            cost_per_month=args.cost_per_month,
            models=parse_models(args.models),
        )
        print(f"Created the key {record.name!r} (id {record.key_id}). It is shown only now:")
        print(key)
        print(f"Every instance accepts it within {config.client_keys_refresh:g} s.")
        return 0

    return _run(config, work)


def cmd_keys_list(config: Config, args: argparse.Namespace) -> int:
    def work(_db: Any, store: Any) -> int:
        records = store.all()
        if args.json:
            print(json.dumps([_as_dict(r) for r in records], indent=2))
            return 0
        if not records:
            print("No named keys (add one with `python -m qwenproxy keys add NAME`).")
            return 0
        head = (
            "name",
            "key id",
            "created",
            "revoked",
            "req/day",
            "tokens/month",
            "cost/month",
            "models",
        )
        rows = [
            (
                r.name,
                r.key_id,
                _when(r.created_at),
                _when(r.revoked_at),
                _limit(r.requests_per_day),
                _limit(r.tokens_per_month),
                _limit(r.cost_per_month),
                ",".join(r.models) or "*",
            )
            for r in records
        ]
        widths = [max(len(str(row[i])) for row in (head, *rows)) for i in range(len(head))]
        for row in (head, *rows):
            print(
                "  ".join(
                    str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )
        return 0

    return _run(config, work)


def cmd_keys_show(config: Config, args: argparse.Namespace) -> int:
    from qwenproxy.ledger.key_usage import KeyUsage

    def work(db: Any, store: Any) -> int:
        record = store.get(args.name)
        used = KeyUsage(db, enabled=not config.disable_accounting).budget_usage(record.key_id)
        budgets = [
            (
                "requests today (UTC)",
                used["requests_today"],
                record.requests_per_day,
                used["day_ends_at"],
            ),
            (
                "tokens this month",
                used["tokens_this_month"],
                record.tokens_per_month,
                used["month_ends_at"],
            ),
            (
                "cost this month",
                round(used["cost_this_month"], 6),
                record.cost_per_month,
                used["month_ends_at"],
            ),
        ]
        if args.json:
            print(json.dumps({**_as_dict(record), "usage": used}, indent=2))
            return 0
        state = f"revoked {_when(record.revoked_at)}" if record.revoked else "live"
        print(f"{record.name} (id {record.key_id}, {state}, created {_when(record.created_at)})")
        print(f"  models: {', '.join(record.models) or 'every model'}")
        for label, value, limit, resets in budgets:
            if limit is None:
                print(f"  {label}: {value:g} (no budget)")
            else:
                share = 100 * value / limit
                print(f"  {label}: {value:g} of {limit:g} ({share:.0f}%), resets {_when(resets)}")
        return 0

    return _run(config, work)


def cmd_keys_revoke(config: Config, args: argparse.Namespace) -> int:
    def work(_db: Any, store: Any) -> int:
        record = store.revoke(args.name)
        print(
            f"Revoked the key {record.name!r} (id {record.key_id}); every instance refuses it "
            f"within {config.client_keys_refresh:g} s."
        )
        return 0

    return _run(config, work)
