"""`GET /usage/stats`, `GET /usage/recent`, `GET /usage/quota` (the usage ledger and the
quota windows as JSON) and `GET /metrics` (Prometheus text). All need the proxy key, like
the API."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, request

from qwenproxy.api.context import require_client, services
from qwenproxy.errors import InvalidRequestError
from qwenproxy.services.quota import quota_metrics_text
from qwenproxy.services.usage_stats import GROUP_BY, parse_duration

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


@bp.get("/usage/stats")
def usage_stats() -> dict[str, Any]:
    since, since_s = since_param()
    group_by = _group_by_param()
    ledger = services().ledger
    return {
        "object": "usage.stats",
        "since": since,
        "since_s": since_s,
        "group_by": group_by,
        "accounting": ledger.enabled,
        "aggregates": aggregates_state(),
        "data": ledger.stats(since_s, group_by),
    }


def aggregates_state() -> dict[str, Any]:
    """Whether the aggregates hold the whole ledger (`ready`) or are still being built from
    the rows of an older ledger (`building`, with rows done and total)."""
    upkeep = services().upkeep
    return upkeep.state() if upkeep is not None else {"state": "off"}


@bp.get("/usage/recent")
def usage_recent() -> dict[str, Any]:
    limit = _limit_param()
    ledger = services().ledger
    return {"object": "list", "accounting": ledger.enabled, "data": ledger.recent(limit)}


@bp.get("/usage/quota")
def usage_quota() -> dict[str, Any]:
    quota = getattr(services(), "quota", None)
    return {"object": "usage.quota", "data": quota.report() if quota is not None else []}


@bp.get("/metrics")
def metrics() -> Response:
    body, content_type = services().metrics.render()
    quota = getattr(services(), "quota", None)
    if quota is not None and quota.windows:
        body += quota_metrics_text(quota.report(resets=False))
    return Response(body, content_type=content_type)
