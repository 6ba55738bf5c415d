"""Turning a finished request into its usage record."""

from __future__ import annotations

from qwenproxy.services.accounting import usage_record
from qwenproxy.services.completions import RequestContext


def test_client_chosen_text_is_bounded_and_nul_free_in_the_ledger():
    ctx = RequestContext("local", "local/s\x00id", requested_model="m\x00" + "x" * 5000)
    ctx.upstream_model, ctx.error_code = "y" * 300, "code\x00"
    rec = usage_record(ctx)
    assert "\x00" not in rec.requested_model + rec.session_id + rec.error_code
    assert len(rec.requested_model) <= 200 and len(rec.upstream_model) == 200


def test_stream_tokens_per_second_counts_from_the_first_token():
    ctx = RequestContext("local", "local", stream=True)
    ctx.started, ctx.first_token_at, ctx.finished_at = 10.0, 10.5, 12.5
    ctx.usage = {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45}
    rec = usage_record(ctx)
    assert rec.tokens_per_s == 20.0 and rec.latency_ms == 2500.0
    assert (rec.prompt_tokens, rec.completion_tokens, rec.total_tokens) == (5, 40, 45)
