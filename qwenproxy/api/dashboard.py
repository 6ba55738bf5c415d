"""`GET /dashboard`: one self-contained HTML page (no scripts, no external assets), from
the Jinja2 templates in qwenproxy/templates (autoescaped; the SVG charts are drawn on the
server by api/charts.py, which escapes every text, and passed in as Markup): requests and
tokens over time, latency and TTFT percentiles, errors by backend and the latest requests.
An admin sees every key, a named key only its own requests. API clients send their key as
a header; a browser logs in through a small form (`POST /dashboard/login`) that sets a
signed, expiring session cookie (edge/dashboard_login.py); no key is ever in a URL."""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request
from markupsafe import Markup

from qwenproxy.api.charts import bar_chart, column_chart, format_number
from qwenproxy.api.context import services, set_caller
from qwenproxy.api.usage import aggregates_state, since_param
from qwenproxy.edge.access import Caller, presented_key
from qwenproxy.edge.dashboard_login import COOKIE_NAME
from qwenproxy.errors import AuthenticationError, PayloadTooLargeError, PermissionDeniedError

bp = Blueprint("dashboard", __name__, template_folder="../templates")

PERIODS = ("1h", "24h", "7d", "30d")
REFRESH_S = 60
RECENT_ROWS = 25
MAX_LOGIN_BODY = 4096
COOKIE_PATH = "/dashboard"
# Nothing may load from elsewhere; styles are inline; forms post only here; no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

PROMPT, COMPLETION, REQUESTS, ERRORS = "#7aa6d6", "#2f6db0", "#4c9a6a", "#c8453c"
P50, P95 = "#2f6db0", "#9cc0e6"


def _utc(epoch_s: float, fmt: str) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, tz=datetime.timezone.utc).strftime(fmt)


def _ms(value: float | None) -> str:
    return format_number(value, "ms")


def _cards(total: Mapping[str, Any], dropped: int) -> list[tuple[str, str]]:
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
    return cards


def _series_charts(series: Sequence[Mapping[str, Any]], bucket_s: int) -> list[Markup]:
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
    return [Markup(requests), Markup(tokens)]  # charts.py escapes every text it draws


def _percentile_charts(by_model: Sequence[Mapping[str, Any]]) -> list[Markup]:
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
    return [Markup(latency), Markup(ttft)]


def _errors_chart(by_backend: Sequence[Mapping[str, Any]]) -> Markup:
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
    return Markup(chart)


def _recent_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The cells of the latest requests, as text (the template escapes them)."""
    out = []
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
        out.append(
            {
                "time": _utc(row["started_at"], "%Y-%m-%d %H:%M:%S"),
                "status": row["status"],
                "error": row["status"] >= 400,
                "backend": row["backend"] or "-",
                "model": row["upstream_model"] or row["requested_model"] or "-",
                "session": row["session_id"] or "-",
                "key": row["client_key_id"] or "-",
                "tokens": f"{format_number(row['prompt_tokens'])} / "
                f"{format_number(row['completion_tokens'])}",
                "latency": _ms(row["latency_ms"]),
                "ttft": _ms(row["ttft_ms"]),
                "tps": format_number(row["tokens_per_s"]),
                "notes": " ".join(notes),
            }
        )
    return out


def _building_notice(aggregates: Mapping[str, Any]) -> str:
    """'' when the aggregates are ready, else how far their build has come."""
    if aggregates.get("state") != "building":
        return ""
    done, total = aggregates.get("done", 0), aggregates.get("total", 0)
    return f" ({100 * done / total:.0f}% of {format_number(total)} rows)" if total else " "


def render_dashboard(
    overview: Mapping[str, Any],
    since: str,
    aggregates: Mapping[str, Any] | None = None,
    key_name: str | None = None,
    logout: bool = False,
    quota_rows: list[dict[str, Any]] | None = None,
) -> str:
    """The whole page (`key_name`: the named key it is limited to; `logout`: the caller
    came with a session cookie, so the page offers a log-out button; `quota_rows`: the
    quota windows' gauges, for an admin, when a backend has windows)."""
    enabled = overview["enabled"]
    context: dict[str, Any] = {
        "since": since,
        "periods": PERIODS,
        "refresh_s": REFRESH_S,
        "generated": _utc(overview["now"], "%Y-%m-%d %H:%M:%S UTC"),
        "enabled": enabled,
        "key_name": key_name,
        "logout_action": f"{COOKIE_PATH}/logout" if logout else None,
        "quota_rows": quota_rows,
    }
    if enabled:
        context.update(
            building=_building_notice(aggregates or {}),
            cards=_cards(overview["total"], overview["dropped"]),
            series_charts=_series_charts(overview["series"], overview["bucket_s"]),
            percentile_charts=(
                _percentile_charts(overview["by_model"]) if key_name is None else []
            ),
            errors_chart=_errors_chart(overview["by_backend"]) if key_name is None else "",
            recent=_recent_rows(overview["recent"]),
        )
    return render_template("dashboard.html", **context)


def _page(body: str, status: int = 200) -> Response:
    response = Response(body, status=status, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _login_page(error: str | None = None, status: int = 401) -> Response:
    sessions = services().dashboard_sessions
    ttl_h = sessions.ttl_s / 3600 if sessions is not None else 0
    page = render_template(
        "login.html",
        action=f"{COOKIE_PATH}/login",
        error=error,
        ttl=f"{ttl_h:g} h" if ttl_h >= 1 else f"{ttl_h * 60:g} min",
    )
    return _page(page, status)


def _session_caller() -> tuple[Caller | None, bool]:
    """Who opens the page, and whether by session cookie. A request with a key header is
    an API client (401/403 as JSON when the key is wrong); without any key configured
    the loopback rule applies; a browser needs a valid, unexpired session of a key that
    is still live (revoked keys lose their sessions within CLIENT_KEYS_REFRESH)."""
    srv = services()
    access = srv.access
    if presented_key(request.headers) is not None or not access.enabled:
        return access.identify(request.headers, request.remote_addr), False
    sessions = srv.dashboard_sessions
    client_id = sessions.verify(request.cookies.get(COOKIE_NAME)) if sessions else None
    return (access.caller_for_id(client_id) if client_id else None), True


@bp.get("/dashboard")
def dashboard() -> Response:
    caller, by_cookie = _session_caller()
    if caller is None:
        return _login_page(status=401)
    set_caller(caller)
    since, since_s = since_param()
    srv = services()
    if caller.admin:
        overview = srv.ledger.overview(since_s, recent=RECENT_ROWS)
        quota = getattr(srv, "quota", None)
        rows = quota.report() if quota is not None and quota.windows else None
        page = render_dashboard(
            overview, since, aggregates_state(), logout=by_cookie, quota_rows=rows
        )
    else:
        overview = srv.key_usage.overview(caller.client_id, since_s, recent=RECENT_ROWS)
        page = render_dashboard(
            overview, since, aggregates_state(), caller.client_key.name, logout=by_cookie
        )
    return _page(page)


def _same_origin() -> None:
    """CSRF: the session cookie is SameSite=Strict, and a form post must come from this
    origin (a browser names it in `Origin`; `Sec-Fetch-Site` when it sends that)."""
    origin = request.headers.get("Origin")
    if origin is not None:
        authority = origin.split("://", 1)[-1].split("/", 1)[0]
        if origin == "null" or authority.lower() != (request.host or "").lower():
            raise PermissionDeniedError("The login form must be posted from this proxy's page.")
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise PermissionDeniedError("The login form must be posted from this proxy's page.")


def _is_https() -> bool:
    if request.is_secure:
        return True
    access = services().access
    forwarded = request.headers.get("X-Forwarded-Proto", "").rsplit(",", 1)[-1].strip()
    return bool(access.trust_proxy_headers and forwarded.lower() == "https")


@bp.post("/dashboard/login")
def login() -> Response:
    _same_origin()
    srv = services()
    if not srv.access.enabled:  # no key anywhere: the page needs no login
        return redirect(COOKIE_PATH, 303)
    if (request.content_length or 0) > MAX_LOGIN_BODY:
        raise PayloadTooLargeError(f"A login form is at most {MAX_LOGIN_BODY} bytes.")
    address = (
        srv.access.client_address(request.remote_addr, request.headers)
        or request.remote_addr
        or "-"
    )
    wait = srv.login_throttle.retry_after(address)
    if wait > 0:
        response = _login_page(
            f"Too many wrong keys from this address; try again in {wait:.0f} s.", 429
        )
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response
    key = request.form.get("key", "").strip()
    try:
        caller = srv.access.identify({"x-api-key": key}, request.remote_addr) if key else None
    except AuthenticationError:
        caller = None
    if caller is None or srv.dashboard_sessions is None:
        srv.login_throttle.failed(address)
        return _login_page("That key is not valid for this proxy.", 401)
    srv.login_throttle.succeeded(address)
    response = redirect(COOKIE_PATH, 303)
    response.set_cookie(
        COOKIE_NAME,
        srv.dashboard_sessions.issue(caller.client_id),
        max_age=int(srv.dashboard_sessions.ttl_s),
        path=COOKIE_PATH,
        secure=_is_https(),
        httponly=True,
        samesite="Strict",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/dashboard/logout")
def logout() -> Response:
    _same_origin()
    response = redirect(COOKIE_PATH, 303)
    response.delete_cookie(
        COOKIE_NAME, path=COOKIE_PATH, secure=_is_https(), httponly=True, samesite="Strict"
    )
    return response
