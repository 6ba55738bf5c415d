"""`GET /usage/stats`, `GET /usage/recent` (the usage ledger as JSON), `GET /usage/quota`
(the quota windows) and `GET /metrics` (Prometheus text). All need a client key, like the
API: an admin key (PROXY_API_KEY) reads everything, a named key only its own usage (403 on
/metrics, /usage/quota and on other keys' data)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from qwenproxy.api.context import admin_only, caller_key, require_client, services
from qwenproxy.errors import InvalidRequestError, PermissionDeniedError
from qwenproxy.ledger.stats import GROUP_BY, parse_duration
from qwenproxy.pipeline.quota import quota_metrics_text

bp = Blueprint("usage", __name__)
bp.before_request(require_client)

DEFAULT_SINCE = "24h"
MAX_RECENT = 1000


def since_param(default: str = DEFAULT_SINCE) -> tuple[str, float]:
    """`?since=` as given and in seconds; 400 when it is not a duration."""
    text = request.args.get("since", default).strip() or default
    try:
        return text, parse_duration(text)
    except ValueError as exc:
        raise InvalidRequestError(f"since: {exc}", param="since") from None


def _group_by_param() -> str | None:
    value = request.args.get("group_by", "").strip().lower() or None
    if value is not None and value not in GROUP_BY:
        raise InvalidRequestError(
            f"group_by must be one of {', '.join(GROUP_BY)}, got {value!r}", param="group_by"
        )
    return value


def _limit_param() -> int:
    raw = request.args.get("limit", "50")
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_RECENT:
        raise InvalidRequestError(
            f"limit must be a whole number from 1 to {MAX_RECENT}, got {raw!r}", param="limit"
        )
    return limit


def key_scope() -> str | None:
    """The one key id these reads are limited to: the caller's own for a named key (403
    when `?key_id=` names another), an admin's `?key_id=`, or None (every key)."""
    wanted = request.args.get("key_id", "").strip() or None
    own = caller_key()
    if own is None:
        return wanted
    if wanted is not None and wanted != own.key_id:
        raise PermissionDeniedError(
            "A named client key reads only its own usage; key_id names another key.",
            param="key_id",
        )
    return own.key_id


@bp.get("/usage/stats")
def usage_stats() -> dict[str, Any]:
    since, since_s = since_param()
    group_by = _group_by_param()
    scope = key_scope()
    ledger = services().ledger
    if scope is None:
        data = ledger.stats(since_s, group_by)
    elif group_by in (None, "key"):
        data = services().key_usage.stats(scope, since_s)
    else:
        error = PermissionDeniedError if caller_key() is not None else InvalidRequestError
        raise error(
            f"group_by={group_by} covers every client key; one key's usage has no groups "
            "but its own (leave group_by out, or use group_by=key).",
            param="group_by",
        )
    body = {
        "object": "usage.stats",
        "since": since,
        "since_s": since_s,
        "group_by": group_by,
        "accounting": ledger.enabled,
        "aggregates": aggregates_state(),
        "data": data,
    }
    if scope is not None:
        body["key_id"] = scope
    return body


def aggregates_state() -> dict[str, Any]:
    """Whether the aggregates hold the whole ledger (`ready`) or are still being built from
    the rows of an older ledger (`building`, with rows done and total)."""
    upkeep = services().upkeep
    return upkeep.state() if upkeep is not None else {"state": "off"}


@bp.get("/usage/recent")
def usage_recent() -> dict[str, Any]:
    limit = _limit_param()
    scope = key_scope()
    ledger = services().ledger
    if scope is None:
        data = ledger.recent(limit)
    else:
        data = services().key_usage.recent(scope, limit)
    return {"object": "list", "accounting": ledger.enabled, "data": data}


@bp.get("/usage/quota")
@admin_only
def usage_quota() -> dict[str, Any]:
    quota = getattr(services(), "quota", None)
    return {"object": "usage.quota", "data": quota.report() if quota is not None else []}


@bp.get("/metrics")
@admin_only
def metrics() -> Response:
    body, content_type = services().metrics.render()
    quota = getattr(services(), "quota", None)
    if quota is not None and quota.windows:
        body += quota_metrics_text(quota.report(resets=False))
    return Response(body, content_type=content_type)
