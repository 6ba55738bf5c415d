"""Turning a finished request into its usage record."""

from __future__ import annotations

from qwenproxy.pipeline.accounting import usage_record
from qwenproxy.pipeline.context import Outcome, RequestContext


def test_client_chosen_text_is_bounded_and_nul_free_in_the_ledger():
    ctx = RequestContext("local", "local/s\x00id", requested_model="m\x00" + "x" * 5000)
    ctx.outcome.upstream_model, ctx.outcome.error_code = "y" * 300, "code\x00"
    rec = usage_record(ctx)
    assert "\x00" not in rec.requested_model + rec.session_id + rec.error_code
    assert len(rec.requested_model) <= 200 and len(rec.upstream_model) == 200


def test_stream_tokens_per_second_counts_from_the_first_token():
    ctx = RequestContext("local", "local", stream=True)
    ctx.started, ctx.outcome.first_token_at, ctx.outcome.finished_at = 10.0, 10.5, 12.5
    ctx.outcome.usage = {"prompt_tokens": 5, "completion_tokens": 40, "total_tokens": 45}
    rec = usage_record(ctx)
    assert rec.tokens_per_s == 20.0 and rec.latency_ms == 2500.0
    assert (rec.prompt_tokens, rec.completion_tokens, rec.total_tokens) == (5, 40, 45)


def test_a_row_gets_its_cache_counts_and_cost():
    from qwenproxy.config import Config
    from qwenproxy.ledger.prices import PriceTable

    prices = PriceTable.for_config(Config())
    ctx = RequestContext("local", "local")
    ctx.outcome.served_by("dashscope", "qwen3-coder-plus")
    ctx.outcome.usage = {
        "prompt_tokens": 3000,
        "completion_tokens": 200,
        "prompt_tokens_details": {
            "cached_tokens": 2000,
            "cache_creation_input_tokens": 500,
            "cache_type": "ephemeral",
        },
    }
    rec = usage_record(ctx, prices)
    assert (rec.cached_tokens, rec.cache_write_tokens) == (2000, 500)
    # $1 / $5 tier: 500 x 1 + 2,000 x 0.1 + 500 x 1.25 + 200 x 5
    #             = 500 + 200 + 625 + 1,000 = 2,325 -> $0.002325
    assert (rec.cost, rec.currency) == (0.002325, "USD")


def test_an_unpriced_or_failed_request_has_no_cost_and_a_local_answer_costs_nothing():
    from qwenproxy.config import Config
    from qwenproxy.ledger.prices import PriceTable

    prices = PriceTable.for_config(Config())
    unpriced = RequestContext("local", "local")
    unpriced.outcome.served_by("openrouter", "qwen/qwen3-coder-plus")
    unpriced.outcome.usage = {"prompt_tokens": 10, "completion_tokens": 1}
    assert usage_record(unpriced, prices).cost is None
    failed = RequestContext("local", "local")
    failed.outcome = Outcome("dashscope", "qwen3-coder-plus", status=502)
    assert usage_record(failed, prices).cost is None  # no usage: tokens unknown
    local = RequestContext("local", "local", outcome=Outcome(command_only=True))
    local.outcome.served_by("local", "qwenproxy")
    local.outcome.usage = {"prompt_tokens": 0, "completion_tokens": 0}
    assert usage_record(local, prices).cost == 0.0
