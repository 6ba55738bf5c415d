"""What the pipeline reports about each request: one usage record (ledger + metrics +
log line, all off the request path) and the stream, failover and loop events."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from qwenproxy.ledger.prices import PriceTable
from qwenproxy.ledger.records import UsageRecord, explicit_cache, tokens_per_second
from qwenproxy.pipeline.context import RequestContext


class Ledger(Protocol):
    def record(self, rec: UsageRecord) -> None: ...


class MetricsSink(Protocol):
    def observe(self, rec: UsageRecord) -> None: ...
    def stream_opened(self) -> None: ...
    def stream_closed(self) -> None: ...
    def failover(self) -> None: ...
    def loop_detected(self) -> None: ...


MAX_LABEL = 200


def _bounded(text: str | None) -> str | None:
    """Client-chosen text as the ledger keeps it: bounded, and without NUL (PostgreSQL
    refuses it, and one bad row must not sink the batch it is written with)."""
    if not text:
        return text
    return text[:MAX_LABEL].replace("\x00", "")


def usage_record(ctx: RequestContext, prices: PriceTable | None = None) -> UsageRecord:
    """The ledger row of a finished request; with `prices`, its cost."""
    out = ctx.outcome
    finished = out.finished_at or ctx.started
    rec = UsageRecord(
        started_at=ctx.started_at,
        session_id=_bounded(ctx.session_id),
        client_key_id=ctx.client_id,
        backend=out.backend or "",
        upstream_model=_bounded(out.upstream_model) or "",
        requested_model=_bounded(ctx.requested_model) or "",
        stream=ctx.stream,
        status=out.status,
        error_code=_bounded(out.error_code),
        latency_ms=(finished - ctx.started) * 1000,
        ttft_ms=out.ttft_ms,
        upstream_latency_ms=out.upstream_latency_ms,
        failover_attempts=max(0, out.attempts - 1),
        loop_detected=out.loop_detected,
        command_only=out.command_only,
        upstream_key_id=out.upstream_key_id,
    )
    rec.apply_usage(out.usage)
    if out.first_token_at is not None:  # streams: generation time after the first token
        generation = finished - out.first_token_at
    else:
        generation = (out.upstream_latency_ms or 0) / 1000
    rec.tokens_per_s = tokens_per_second(rec.completion_tokens, generation)
    if rec.backend == "local":  # answered by the proxy itself (commands): nothing billed
        rec.cost = 0.0
    elif prices is not None:
        cost = prices.cost(
            rec.backend,
            rec.upstream_model,
            rec.prompt_tokens,
            rec.completion_tokens,
            rec.cached_tokens,
            rec.cache_write_tokens,
            explicit_cache(out.usage),
        )
        if cost is not None:
            rec.cost, rec.currency = cost.amount, cost.currency
    return rec


class Accounting:
    """Turns finished requests into ledger rows and metrics; never raises into a request."""

    def __init__(
        self,
        ledger: Ledger,
        metrics: MetricsSink,
        known_model: Callable[[str], bool] = lambda name: True,
        prices: PriceTable | None = None,
    ) -> None:
        self.ledger = ledger
        self.metrics = metrics
        self._known_model = known_model
        self._prices = prices

    def finished(self, ctx: RequestContext) -> UsageRecord:
        """Record a finished request; its ledger row."""
        rec, out = usage_record(ctx, self._prices), ctx.outcome
        self.ledger.record(rec)
        kept = rec
        named = rec.upstream_model or rec.requested_model  # a refusal has only the latter
        if named and not self._known_model(named):
            # Metric labels stay bounded whatever model names clients send.
            rec = dataclasses.replace(rec, upstream_model="other", requested_model="other")
        self.metrics.observe(rec)
        if out.attempts > 1:
            for _ in range(out.attempts - 1):
                self.metrics.failover()
        if out.loop_detected:
            self.metrics.loop_detected()
        return kept

    def stream_opened(self) -> None:
        self.metrics.stream_opened()

    def stream_closed(self) -> None:
        self.metrics.stream_closed()
