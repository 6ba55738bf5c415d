"""`python -m qwenproxy usage [--since 7d] [--by model] [--json]`: the usage ledger as an
aligned table or JSON, read from the configured database; `usage export --since 30d
--format csv|jsonl` streams its raw rows, oldest first. Database code is imported when
the command runs, so `serve` does not load it into gunicorn's master."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from qwenproxy.cli import open_database
from qwenproxy.config import Config
from qwenproxy.errors import ProxyError

GROUP_CHOICES = ("model", "backend", "session", "key", "day")

# (heading, key in a stats row, right-aligned)
COLUMNS: tuple[tuple[str, str, bool], ...] = (
    ("group", "group", False),
    ("requests", "requests", True),
    ("errors", "errors", True),
    ("prompt", "prompt_tokens", True),
    ("completion", "completion_tokens", True),
    ("total", "total_tokens", True),
    ("cached", "cached_tokens", True),
    ("p50 ms", "latency_ms_p50", True),
    ("p95 ms", "latency_ms_p95", True),
    ("ttft p50", "ttft_ms_p50", True),
    ("ttft p95", "ttft_ms_p95", True),
    ("tok/s", "tokens_per_s_avg", True),
    ("cache hit", "cache_hit_ratio", True),
    ("cost", "cost", True),
)


def _since(text: str) -> str:
    from qwenproxy.ledger.stats import parse_duration

    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_usage_command(subparsers: Any) -> None:
    """Register `usage` on the `python -m qwenproxy` sub-command parser."""
    usage = subparsers.add_parser(
        "usage", help="requests, tokens and latency from the usage ledger"
    )
    usage.add_argument(
        "--since", type=_since, default="7d", help="period: 90s, 30m, 24h, 7d (default 7d)"
    )
    usage.add_argument(
        "--by", choices=GROUP_CHOICES, default="model", help="group rows by (default model)"
    )
    usage.add_argument("--json", action="store_true", help="print JSON instead of a table")
    usage.add_argument(
        "action",
        nargs="?",
        choices=("export",),
        help="export: write every raw row of the period to stdout (for billing)",
    )
    usage.add_argument(
        "--format", choices=("csv", "jsonl"), default="csv", help="export format (default csv)"
    )
    usage.set_defaults(handler=cmd_usage)


def _cell(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if key == "cost":
        return f"{value:.4f}"
    if key == "cache_hit_ratio":
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], total: Mapping[str, Any] | None) -> str:
    """Columns aligned with spaces; a TOTAL line under the groups when given."""
    lines = [[heading for heading, _, _ in COLUMNS]]
    body = list(rows) + ([{**total, "group": "TOTAL"}] if total else [])
    lines += [[_cell(row[key], key) for _, key, _ in COLUMNS] for row in body]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]

    def render(line: list[str]) -> str:
        cells = [
            text.rjust(width) if right else text.ljust(width)
            for text, width, (_, _, right) in zip(line, widths, COLUMNS, strict=True)
        ]
        return "  ".join(cells).rstrip()

    rendered = [render(line) for line in lines]
    rule = "-" * max(len(line) for line in rendered)
    if total:
        return "\n".join([rendered[0], rule, *rendered[1:-1], rule, rendered[-1]])
    return "\n".join([rendered[0], rule, *rendered[1:]])


def cmd_usage(config: Config, args: argparse.Namespace) -> int:
    from qwenproxy.ledger.stats import parse_duration
    from qwenproxy.ledger.writer import UsageLedger

    since_s = parse_duration(args.since)
    db = open_database(config, "usage")
    if db is None:
        return 1
    try:
        ledger = UsageLedger(db)
        if args.action == "export":
            return export_rows(ledger.export(since_s), args.format, sys.stdout)
        groups = ledger.stats(since_s, args.by)
        total = ledger.stats(since_s, None)[0]
    except ProxyError as exc:
        print(f"usage: {exc.message}", file=sys.stderr)
        return 1
    finally:
        db.dispose()
    if args.json:
        report = {
            "since": args.since,
            "since_s": since_s,
            "group_by": args.by,
            "groups": groups,
            "total": total,
        }
        print(json.dumps(report, indent=2))
        return 0
    print(f"usage in the last {args.since}, by {args.by}")
    if not groups:
        print("no requests recorded")
        return 0
    print(format_table(groups, total))
    return 0


def export_rows(rows: Iterable[Mapping[str, Any]], fmt: str, out: TextIO) -> int:
    """Write rows as CSV (a header line, then one line a row) or JSON lines, as they come."""
    from qwenproxy.ledger.records import RECORD_FIELDS

    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=RECORD_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    else:
        for row in rows:
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
    out.flush()
    return 0
