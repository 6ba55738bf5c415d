"""One ledger row: `UsageRecord` (what one request cost and how fast it was), the
`qp_usage` table that stores it, and the request log line written for it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import orjson
import sqlalchemy as sa

from qwenproxy.ledger import aggregates as agg
from qwenproxy.store import metadata

LOG_FORMATS = ("human", "json")


# --- what the upstream reports of its prompt cache -------------------------------------


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def cache_counts(usage: Any) -> tuple[int | None, int | None]:
    """(tokens read from the cache, tokens written to it) of an OpenAI-style `usage`;
    None where the upstream did not say. Both are part of `prompt_tokens`.

    Model Studio reports both in `prompt_tokens_details`: `cached_tokens` and, for an
    explicit cache, `cache_creation_input_tokens` (with `cache_type: "ephemeral"`) — its
    context-cache page, and `GenerationUsage.PromptTokensDetails` of dashscope-sdk-java.
    Some OpenAI-compatible gateways put `cache_creation_input_tokens` beside
    `prompt_tokens` instead; that is read too."""
    if not isinstance(usage, Mapping):
        return None, None
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, Mapping) else {}
    cached = _count(details.get("cached_tokens"))
    written = _count(details.get("cache_creation_input_tokens"))
    if written is None:
        written = _count(usage.get("cache_creation_input_tokens"))
    return cached, written


def explicit_cache(usage: Any) -> bool:
    """Whether the upstream served this prompt from an explicit (marker-made) cache: its
    hits bill at another price than implicit ones on Model Studio."""
    if not isinstance(usage, Mapping):
        return False
    details = usage.get("prompt_tokens_details")
    if not isinstance(details, Mapping):
        return False
    return details.get("cache_type") == "ephemeral" or "cache_creation_input_tokens" in details


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(slots=True, kw_only=True)
class UsageRecord:
    """What one request cost and how fast it was. No message content, no secrets:
    `client_key_id` is the short hash from `ClientAccess`, never a key."""

    id: str = field(default_factory=_new_id)
    started_at: float
    session_id: str | None = None
    client_key_id: str | None = None
    backend: str = ""
    upstream_model: str = ""
    requested_model: str = ""
    stream: bool = False
    status: int = 200
    error_code: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    cached_tokens: int | None = None  # read from the prompt cache (part of prompt_tokens)
    cache_write_tokens: int | None = None  # written to the prompt cache (part of prompt_tokens)
    cost: float | None = None  # in `currency`; None when a price or the counts are unknown
    currency: str | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    upstream_latency_ms: float | None = None
    tokens_per_s: float | None = None
    failover_attempts: int = 0
    loop_detected: bool = False
    command_only: bool = False
    # The upstream key (config.values.key_id) of the request's final attempt; None when no
    # attempt reached an upstream (local replies, refusals).
    upstream_key_id: str | None = None

    def apply_usage(self, usage: Mapping[str, Any] | None) -> None:
        """Copy token counts from an OpenAI `usage` object (missing values stay None)."""
        if not usage:
            return
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, value)
        cached, written = cache_counts(usage)
        if cached is not None:
            self.cached_tokens = cached
        if written is not None:
            self.cache_write_tokens = written

    def as_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RECORD_FIELDS}

    def aggregate_source(self) -> tuple[Any, ...]:
        """The values the aggregates are made of (aggregates.SOURCE_COLUMNS)."""
        return tuple(getattr(self, name) for name in agg.SOURCE_COLUMNS)


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(UsageRecord))


def tokens_per_second(completion_tokens: int | None, generation_s: float | None) -> float | None:
    """Completion tokens over generation time (first token to last); None if unknown."""
    if not completion_tokens or not generation_s or generation_s <= 0:
        return None
    return completion_tokens / generation_s


usage_table = sa.Table(
    "qp_usage",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("session_id", sa.Text),
    sa.Column("client_key_id", sa.String(64)),
    sa.Column("backend", sa.Text, nullable=False),
    sa.Column("upstream_model", sa.Text, nullable=False),
    sa.Column("requested_model", sa.Text, nullable=False),
    sa.Column("stream", sa.Boolean, nullable=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("error_code", sa.Text),
    sa.Column("prompt_tokens", sa.Integer),
    sa.Column("completion_tokens", sa.Integer),
    sa.Column("total_tokens", sa.Integer),
    sa.Column("cached_tokens", sa.Integer),
    sa.Column("cache_write_tokens", sa.Integer),
    sa.Column("cost", sa.Float),
    sa.Column("currency", sa.String(8)),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("ttft_ms", sa.Float),
    sa.Column("upstream_latency_ms", sa.Float),
    sa.Column("tokens_per_s", sa.Float),
    sa.Column("failover_attempts", sa.Integer, nullable=False),
    sa.Column("loop_detected", sa.Boolean, nullable=False),
    sa.Column("command_only", sa.Boolean, nullable=False),
    sa.Column("upstream_key_id", sa.String(16)),
    # When the writer stored the row (and added it to the aggregates); None on rows from
    # before the aggregates existed, which the upkeep adds once (upkeep.py).
    sa.Column("written_at", sa.Float),
    sa.Index("ix_qp_usage_started_at", "started_at"),
)
INSERT_SQL = (
    f"INSERT INTO qp_usage ({', '.join(RECORD_FIELDS)}, written_at) "
    f"VALUES ({', '.join(':' + name for name in RECORD_FIELDS)}, :written_at)"
)


def _log_value(value: Any) -> str:
    """One whitespace-free token: client-chosen names must not forge log lines."""
    if value is None or value == "":
        return "-"
    text = str(value)[:200]
    return "".join(c if c.isprintable() and not c.isspace() else "_" for c in text)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}ms"


def human_log_line(rec: UsageRecord) -> str:
    line = (
        f"req {rec.id[:8]} session={_log_value(rec.session_id)} "
        f"client={_log_value(rec.client_key_id)} backend={_log_value(rec.backend)} "
        f"model={_log_value(rec.upstream_model or rec.requested_model)} status={rec.status} "
        f"tokens={rec.prompt_tokens or 0}/{rec.completion_tokens or 0} "
        f"latency={_ms(rec.latency_ms)} ttft={_ms(rec.ttft_ms)}"
    )
    extras = []
    if rec.stream:
        extras.append("stream")
    if rec.tokens_per_s is not None:
        extras.append(f"tps={rec.tokens_per_s:.1f}")
    if rec.error_code:
        extras.append(f"error={_log_value(rec.error_code)}")
    if rec.failover_attempts:
        extras.append(f"failovers={rec.failover_attempts}")
    if rec.loop_detected:
        extras.append("loop_detected")
    if rec.command_only:
        extras.append("command_only")
    return " ".join([line, *extras])


def json_log_line(rec: UsageRecord) -> str:
    return orjson.dumps({"event": "request", **rec.as_row()}).decode()
