"""`GET /dashboard`: one self-contained HTML page (no scripts, no external assets) with
requests and tokens over time, latency and TTFT percentiles, errors by backend and the
latest requests. Needs the proxy key, as a header or as `?key=` for a browser."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, render_template, request

from qwenproxy.api.charts import bar_chart, column_chart, format_number
from qwenproxy.api.context import require_client_or_key_param, services
from qwenproxy.api.usage import aggregates_state, since_param

bp = Blueprint("dashboard", __name__)
bp.before_request(require_client_or_key_param)

PERIODS = ("1h", "24h", "7d", "30d")
REFRESH_S = 60
RECENT_ROWS = 25
# Nothing may load from elsewhere; styles are inline.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'"

PROMPT, COMPLETION, REQUESTS, ERRORS = "#7aa6d6", "#2f6db0", "#4c9a6a", "#c8453c"
P50, P95 = "#2f6db0", "#9cc0e6"

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:24px 0 8px}
.muted{color:#777;font-size:12px}.periods a{margin-right:10px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:16px 0}
.card{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:8px 12px;min-width:110px}
.card b{display:block;font-size:18px}.card span{color:#777;font-size:12px}
.panel{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:10px;margin:10px 0;
overflow-x:auto}
table{border-collapse:collapse;font-size:12px;background:#fff}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums}.err{color:#c8453c}
"""


def _utc(epoch_s: float, fmt: str) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, tz=datetime.timezone.utc).strftime(fmt)


def _ms(value: float | None) -> str:
    return format_number(value, "ms")


def _cards(total: Mapping[str, Any], dropped: int) -> str:
    cards = [
        ("requests", format_number(total["requests"])),
        ("errors", format_number(total["errors"])),
        ("prompt tokens", format_number(total["prompt_tokens"])),
        ("completion tokens", format_number(total["completion_tokens"])),
        ("latency p50 / p95", f"{_ms(total['latency_ms_p50'])} / {_ms(total['latency_ms_p95'])}"),
        ("TTFT p50 / p95", f"{_ms(total['ttft_ms_p50'])} / {_ms(total['ttft_ms_p95'])}"),
        ("tokens/s (avg)", format_number(total["tokens_per_s_avg"])),
        (
            "cache hit ratio",
            "-" if total["cache_hit_ratio"] is None else f"{100 * total['cache_hit_ratio']:.1f}%",
        ),
        ("cost (priced requests)", "-" if total["cost"] is None else f"{total['cost']:.4f}"),
    ]
    if dropped:
        cards.append(("rows dropped (queue full)", format_number(dropped)))
    return "".join(
        f'<div class="card"><b>{escape(value)}</b><span>{escape(name)}</span></div>'
        for name, value in cards
    )


def _series_charts(series: Sequence[Mapping[str, Any]], bucket_s: int) -> str:
    fmt = "%H:%M" if bucket_s < 86400 else "%m-%d"
    labels = [_utc(point["start"], fmt) for point in series]

    def column(name: str) -> list[float]:
        return [point[name] for point in series]

    ok = [r - e for r, e in zip(column("requests"), column("errors"), strict=True)]
    requests = column_chart(
        labels,
        [("ok", REQUESTS, ok), ("errors", ERRORS, column("errors"))],
        title="Requests",
    )
    tokens = column_chart(
        labels,
        [
            ("prompt", PROMPT, column("prompt_tokens")),
            ("completion", COMPLETION, column("completion_tokens")),
        ],
        title="Tokens",
        unit="tokens",
    )
    return f'<div class="panel">{requests}</div><div class="panel">{tokens}</div>'


def _percentile_charts(by_model: Sequence[Mapping[str, Any]]) -> str:
    latency = bar_chart(
        [
            (
                row["group"],
                [("p50", P50, row["latency_ms_p50"]), ("p95", P95, row["latency_ms_p95"])],
            )
            for row in by_model
        ],
        title="Latency by model",
        unit="ms",
    )
    ttft = bar_chart(
        [
            (row["group"], [("p50", P50, row["ttft_ms_p50"]), ("p95", P95, row["ttft_ms_p95"])])
            for row in by_model
            if row["ttft_ms_p50"] is not None
        ],
        title="Time to first token by model (streams)",
        unit="ms",
    )
    return f'<div class="panel">{latency}</div><div class="panel">{ttft}</div>'


def _errors_chart(by_backend: Sequence[Mapping[str, Any]]) -> str:
    chart = bar_chart(
        [
            (
                row["group"],
                [("requests", REQUESTS, row["requests"]), ("errors", ERRORS, row["errors"])],
            )
            for row in by_backend
        ],
        title="Errors by backend",
    )
    return f'<div class="panel">{chart}</div>'


def _recent_table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = (
        "<tr><th>time (UTC)</th><th>status</th><th>backend</th><th>model</th><th>session</th>"
        "<th>key</th><th>tokens in/out</th><th>latency</th><th>TTFT</th><th>tok/s</th>"
        "<th>notes</th></tr>"
    )
    body = []
    for row in rows:
        notes = [
            note
            for note, present in (
                ("stream", row["stream"]),
                (f"failovers={row['failover_attempts']}", row["failover_attempts"]),
                ("loop", row["loop_detected"]),
                ("command", row["command_only"]),
                (str(row["error_code"]), row["error_code"]),
            )
            if present
        ]
        status_class = ' class="n err"' if row["status"] >= 400 else ' class="n"'
        cells = [
            f"<td>{_utc(row['started_at'], '%Y-%m-%d %H:%M:%S')}</td>",
            f"<td{status_class}>{row['status']}</td>",
            f"<td>{escape(row['backend'] or '-')}</td>",
            f"<td>{escape(row['upstream_model'] or row['requested_model'] or '-')}</td>",
            f"<td>{escape(row['session_id'] or '-')}</td>",
            f"<td>{escape(row['client_key_id'] or '-')}</td>",
            f'<td class="n">{format_number(row["prompt_tokens"])} / '
            f"{format_number(row['completion_tokens'])}</td>",
            f'<td class="n">{_ms(row["latency_ms"])}</td>',
            f'<td class="n">{_ms(row["ttft_ms"])}</td>',
            f'<td class="n">{format_number(row["tokens_per_s"])}</td>',
            f"<td>{escape(' '.join(notes))}</td>",
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    if not body:
        body.append('<tr><td colspan="11" class="muted">no requests yet</td></tr>')
    return f'<div class="panel"><table>{head}{"".join(body)}</table></div>'


def _building_notice(aggregates: Mapping[str, Any]) -> str:
    if aggregates.get("state") != "building":
        return ""
    done, total = aggregates.get("done", 0), aggregates.get("total", 0)
    share = f" ({100 * done / total:.0f}% of {format_number(total)} rows)" if total else ""
    return (
        '<p class="err">The usage totals are being built from the rows of an older ledger'
        f"{escape(share)}; until that is done they leave out part of the older requests.</p>"
    )


def render_dashboard(
    overview: Mapping[str, Any],
    since: str,
    key: str | None,
    aggregates: Mapping[str, Any] | None = None,
    quota_html: str = "",
) -> str:
    """The whole page. `key` is carried into the period links when it came in the URL."""

    def link(period: str) -> str:
        query = {"since": period, **({"key": key} if key else {})}
        current = ' style="font-weight:600"' if period == since else ""
        return f'<a href="?{escape(urlencode(query))}"{current}>{escape(period)}</a>'

    generated = _utc(overview["now"], "%Y-%m-%d %H:%M:%S UTC")
    if not overview["enabled"]:
        content = (
            '<p class="muted">Accounting is turned off (DISABLE_ACCOUNTING=true): '
            "no requests are recorded.</p>"
        )
    else:
        content = (
            _building_notice(aggregates or {})
            + f'<div class="cards">{_cards(overview["total"], overview["dropped"])}</div>'
            + quota_html
            + f"<h2>Over time</h2>{_series_charts(overview['series'], overview['bucket_s'])}"
            f"<h2>Latency</h2>{_percentile_charts(overview['by_model'])}"
            f"<h2>Errors</h2>{_errors_chart(overview['by_backend'])}"
            f"<h2>Recent requests</h2>{_recent_table(overview['recent'])}"
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>qwenproxy usage</title><style>{STYLE}</style></head><body>"
        f"<h1>qwenproxy usage — last {escape(since)}</h1>"
        f'<div class="muted">generated {generated}; refreshes every {REFRESH_S} s</div>'
        f'<div class="periods">{"".join(link(p) for p in PERIODS)}</div>'
        f"{content}</body></html>"
    )


@bp.get("/dashboard")
def dashboard() -> Response:
    since, since_s = since_param()
    overview = services().ledger.overview(since_s, recent=RECENT_ROWS)
    quota = getattr(services(), "quota", None)
    quota_html = ""
    if quota is not None and quota.windows:  # templates/quota_gauges.html
        quota_html = render_template("quota_gauges.html", rows=quota.report())
    page = render_dashboard(
        overview, since, request.args.get("key", "").strip() or None, aggregates_state(),
        quota_html,
    )
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
