"""A request's context and its outcome: who writes what, and the client check."""

from __future__ import annotations

import pytest

from qwenproxy.errors import ClientGoneError, RateLimitError
from qwenproxy.pipeline.context import Outcome, RequestContext


def test_the_outcome_is_written_through_its_methods_and_read_on_the_context():
    ctx = RequestContext("client", "session")
    assert (ctx.status, ctx.error_code, ctx.usage, ctx.finished_at) == (200, None, None, None)
    ctx.outcome.served_by("dashscope", "qwen3-coder-plus")
    ctx.outcome.first_token(ctx.started)
    assert ctx.outcome.ttft_ms is not None and ctx.outcome.ttft_ms >= 0
    ctx.fail(RateLimitError("slow down"))
    assert (ctx.status, ctx.error_code) == (429, "rate_limit_exceeded")
    ctx.outcome.upstream_failed(None)
    assert (ctx.status, ctx.error_code) == (502, "upstream_error")
    ctx.outcome.client_left()
    assert (ctx.status, ctx.error_code) == (499, "client_disconnected")
    ctx.outcome.finish()
    first = ctx.finished_at
    ctx.outcome.finish()  # the first end counts
    assert first is not None and ctx.finished_at == first
    assert RequestContext("a", "b").outcome is not RequestContext("a", "b").outcome
    assert Outcome().attempts == 0


def test_the_client_check_raises_when_the_client_left_and_ticks_the_keep_alive():
    ticks: list[bool] = []
    ctx = RequestContext("c", "s", client_gone=lambda: False, on_wait=lambda: ticks.append(True))
    ctx.check_client()
    assert ticks == [True]
    gone = RequestContext("c", "s", client_gone=lambda: True)
    with pytest.raises(ClientGoneError):
        gone.check_client()
