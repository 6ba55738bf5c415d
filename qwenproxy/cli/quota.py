"""`python -m qwenproxy quota [--json]`: what each upstream key has left of its request
windows (the same rows as `GET /usage/quota`), read from the configured database's
aggregates. Database code is imported when the command runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qwenproxy.cli import open_database
from qwenproxy.config import Config
from qwenproxy.errors import ProxyError

HEADINGS = ("backend", "key_id", "window", "limit", "used", "remaining", "resets_at")


def add_quota_command(subparsers: Any) -> None:
    """Register `quota` on the `python -m qwenproxy` sub-command parser."""
    quota = subparsers.add_parser("quota", help="what each upstream key has left of its windows")
    quota.add_argument("--json", action="store_true", help="print JSON instead of a table")
    quota.set_defaults(handler=cmd_quota)


def configured_key_ids(config: Config) -> dict[str, list[str]]:
    """The key ids of every backend with credentials, as the running proxy names them."""
    from qwenproxy.config.secrets import key_id as key_id_of
    from qwenproxy.upstream.specs import key_backend_specs

    ids = {spec.name: [key_id_of(key) for key in spec.keys] for spec in key_backend_specs(config)}
    ids["qwen-oauth"] = [key_id_of(str(Path(path))) for path in config.qwen_oauth_creds]
    return ids


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = [list(HEADINGS)] + [
        ["-" if row[h] is None else str(row[h]) for h in HEADINGS] for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADINGS))]
    rendered = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    return "\n".join([rendered[0], "-" * max(len(r) for r in rendered), *rendered[1:]])


def cmd_quota(config: Config, args: argparse.Namespace) -> int:
    from qwenproxy.ledger.limits import LimitEngine
    from qwenproxy.pipeline.quota import QuotaGate

    db = open_database(config, "quota")
    if db is None:
        return 1
    try:
        gate = QuotaGate(
            LimitEngine(db), config.effective_quota_windows(), configured_key_ids(config)
        )
        rows = gate.report()
    except ProxyError as exc:
        print(f"quota: {exc.message}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    if args.json:
        print(json.dumps({"object": "usage.quota", "data": rows}, indent=2))
        return 0
    if not rows:
        print("no backend with request windows has keys configured")
        return 0
    print(format_rows(rows))
    return 0
