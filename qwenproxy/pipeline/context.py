"""One request's context, in two small types: `RequestContext`, who asked for what (set by
the front door before the pipeline runs), and `Outcome`, what became of it (written by the
pipeline as it goes, read by accounting when the request is over). Each field below says
who writes it; the outcome's shared facts (status, timings, what served it) are written
through its methods only. Neither type imports the pipeline, so every part of it can use
them without an import circle. New fields go at the end of their group with a default.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qwenproxy.errors import ClientGoneError, ProxyError


@dataclass(slots=True)
class Outcome:
    """What became of a request: the facts its ledger row and metrics are made of."""

    # CompletionService._attempt (an upstream) or local_reply ("local"): `served_by`.
    backend: str | None = None
    upstream_model: str | None = None
    # `fail`, `client_left` and `upstream_failed`, whoever saw it (pipeline, relay, the
    # error handlers).
    status: int = 200
    error_code: str | None = None
    usage: dict[str, Any] | None = None  # the upstream's usage: the relay or _complete
    ttft_ms: float | None = None  # the relay, through `first_token`
    first_token_at: float | None = None  # the relay, through `first_token`
    upstream_latency_ms: float | None = None  # CompletionService._attempt
    finished_at: float | None = None  # `finish`: the pipeline, or an error handler
    attempts: int = 0  # CompletionService._attempt
    loop_detected: bool = False  # the relay (streams) or _complete
    command_only: bool = False  # CompletionService._handle: answered by commands
    redactions: int = 0  # CompletionService._handle: secrets redacted from the prompt
    max_tokens_lowered: int | None = None  # _attempt: what the context guard lowered it to
    # _attempt: the upstream key id (config.values.key_id) of the last attempt sent.
    upstream_key_id: str | None = None
    # CompletionService.handle: the token and cost budgets this request holds a place in
    # until it ends (pipeline/quota.py); given back by CompletionService._finish.
    budget_spends: list[Any] = field(default_factory=list)

    def served_by(self, backend: str, model: str) -> None:
        self.backend, self.upstream_model = backend, model

    def fail(self, error: ProxyError) -> None:
        self.status, self.error_code = error.status, error.code

    def client_left(self) -> None:
        self.status, self.error_code = 499, "client_disconnected"

    def upstream_failed(self, code: str | None) -> None:
        self.status, self.error_code = 502, code or "upstream_error"

    def first_token(self, started: float) -> None:
        self.first_token_at = time.perf_counter()
        self.ttft_ms = (self.first_token_at - started) * 1000

    def finish(self) -> None:
        if self.finished_at is None:
            self.finished_at = time.perf_counter()


@dataclass(slots=True)
class RequestContext:
    """Who is asking and what: written by the front door (api/context.py) when the request
    comes in, except where a field says otherwise; `outcome` is what became of it."""

    client_id: str
    session_id: str
    # The model the client named: the door (a translating door passes its client's name),
    # else CompletionService.handle from the body.
    requested_model: str | None = None
    stream: bool = False  # CompletionService.handle, from the body
    started: float = field(default_factory=time.perf_counter)
    started_at: float = field(default_factory=time.time)
    # The door speaks another API (Anthropic, Responses): the stream's events come as
    # the pieces of each chunk rather than OpenAI chunks (pipeline/events.py).
    translated: bool = False
    # The body carries cache_control markers a front door put there (from its client's);
    # they go only to backends whose `cache_markers` switch is on.
    cache_markers: bool = False
    # Whether the client has closed its connection (None: cannot tell, e.g. in tests).
    client_gone: Callable[[], bool] | None = None
    # Called too while an upstream is awaited, after the client check: the non-stream
    # keep-alive sends its spaces from there (edge/slow_answer.py; set by
    # api/context.run_pipeline). None: nothing.
    on_wait: Callable[[], None] | None = None
    # The named client key (its budgets: pipeline/quota.py); None for admin/unnamed keys.
    client_key: Any = None
    outcome: Outcome = field(default_factory=Outcome)

    def check_client(self) -> None:
        """Raise ClientGoneError when the client has left (asked while an upstream is
        awaited, so an abandoned request stops costing upstream time)."""
        if self.client_gone is not None and self.client_gone():
            raise ClientGoneError("The client closed the connection.")
        if self.on_wait is not None:
            self.on_wait()

    def fail(self, error: ProxyError) -> None:
        self.outcome.fail(error)

    # What became of it, to read (tests and accounting read these; writes go to `outcome`).
    @property
    def status(self) -> int:
        return self.outcome.status

    @property
    def error_code(self) -> str | None:
        return self.outcome.error_code

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.outcome.usage

    @property
    def finished_at(self) -> float | None:
        return self.outcome.finished_at
