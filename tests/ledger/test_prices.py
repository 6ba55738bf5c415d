"""Cost of a request's tokens from the price table. Every expected figure below is worked
out by hand from the prices in the comment beside it (per million tokens), not taken from
the code under test."""

from __future__ import annotations

import json

import pytest

from qwenproxy.config import Config
from qwenproxy.ledger.prices import Cost, PriceTable


def table(**environ: str) -> PriceTable:
    return PriceTable.for_config(Config.from_env(environ=environ, dotenv_path=None))


INTL = table()  # DASHSCOPE_REGION=intl (default): USD


def cost(backend="dashscope", model="qwen3-coder-plus", prices=INTL, **tokens) -> Cost | None:
    return prices.cost(backend, model, **tokens)


def test_a_short_prompt_without_cache_bills_input_and_output():
    # qwen3-coder-plus, first tier: $1 input, $5 output.
    # 10,000 x 1 + 1,000 x 5 = 15,000 -> $0.015
    assert cost(prompt_tokens=10_000, completion_tokens=1_000) == Cost(0.015, "USD")


def test_explicit_cache_hits_bill_at_a_tenth_of_the_input_price():
    # 5,000 uncached x 1 + 15,000 cached x 0.10 + 500 x 5 = 5,000 + 1,500 + 2,500 -> $0.009
    assert cost(
        prompt_tokens=20_000, completion_tokens=500, cached_tokens=15_000, explicit_cache=True
    ) == Cost(0.009, "USD")


def test_implicit_cache_hits_bill_at_a_fifth_of_the_input_price():
    # 5,000 x 1 + 15,000 x 0.20 + 500 x 5 = 5,000 + 3,000 + 2,500 -> $0.0105
    assert cost(prompt_tokens=20_000, completion_tokens=500, cached_tokens=15_000) == Cost(
        0.0105, "USD"
    )


def test_cache_writes_bill_at_a_quarter_more_than_input():
    # Model Studio's example usage: 18,628 prompt tokens, 18,613 written, 344 out.
    # 15 x 1 + 18,613 x 1.25 + 344 x 5 = 15 + 23,266.25 + 1,720 = 25,001.25 -> $0.02500125
    assert cost(
        prompt_tokens=18_628,
        completion_tokens=344,
        cached_tokens=0,
        cache_write_tokens=18_613,
        explicit_cache=True,
    ) == Cost(0.02500125, "USD")


@pytest.mark.parametrize(
    "prompt, completion, expected",
    [
        (32_000, 0, 0.032),  # 32,000 x $1 (the first tier includes its bound)
        (32_001, 0, 0.0576018),  # 32,001 x $1.8
        (100_000, 2_000, 0.198),  # 100,000 x 1.8 + 2,000 x 9 = 198,000
        (200_000, 1_000, 0.615),  # 200,000 x 3 + 1,000 x 15 = 615,000
        (300_000, 1_000, 1.86),  # 300,000 x 6 + 1,000 x 60 = 1,860,000
    ],
)
def test_the_tier_is_chosen_by_the_whole_prompts_length(prompt, completion, expected):
    assert cost(prompt_tokens=prompt, completion_tokens=completion) == Cost(expected, "USD")


def test_cached_tokens_count_toward_the_tier():
    # 100,000 prompt tokens of which 90,000 cached: still the 32K-128K tier ($1.8, $9).
    # 10,000 x 1.8 + 90,000 x 0.18 + 0 = 18,000 + 16,200 = 34,200 -> $0.0342
    assert cost(
        prompt_tokens=100_000, completion_tokens=0, cached_tokens=90_000, explicit_cache=True
    ) == Cost(0.0342, "USD")


def test_china_region_prices_are_in_yuan():
    # help.aliyun.com qwen3-coder-plus, 0-32K: 0.004 / 0.016 CNY per thousand = 4 / 16 per M.
    # 10,000 x 4 + 1,000 x 16 = 56,000 -> 0.056 CNY
    cn = table(DASHSCOPE_REGION="cn")
    assert cost(prices=cn, prompt_tokens=10_000, completion_tokens=1_000) == Cost(0.056, "CNY")


def test_subscription_backends_cost_nothing_per_token():
    assert cost("coding-plan", "glm-5", prompt_tokens=500_000, completion_tokens=9_000) == Cost(
        0.0, "USD"
    )
    cn = table(CODING_PLAN_REGION="cn")
    assert cost(
        "coding-plan", "qwen3-coder-plus", prices=cn, prompt_tokens=1, completion_tokens=1
    ) == Cost(0.0, "CNY")


@pytest.mark.parametrize(
    "backend, model",
    [
        ("openrouter", "qwen/qwen3-coder-plus"),
        ("fireworks", "accounts/fireworks/models/qwen3-coder-480b-a35b-instruct"),
        ("dashscope", "qwen3.5-plus"),  # no built-in price found: unknown, not 0
    ],
)
def test_an_unknown_price_is_no_cost_at_all(backend, model):
    assert cost(backend, model, prompt_tokens=10, completion_tokens=10) is None


def test_unknown_token_counts_are_no_cost_at_all():
    assert cost(prompt_tokens=None, completion_tokens=10) is None
    assert cost(prompt_tokens=10, completion_tokens=None) is None


def test_the_us_region_has_no_built_in_prices():
    us = table(DASHSCOPE_REGION="us")
    assert cost(prices=us, prompt_tokens=10, completion_tokens=10) is None


def test_model_prices_override_with_a_flat_price():
    # The example: $1 / $5, cache read $0.10, cache write $1.25, no tiers.
    # 300,000 prompt (200,000 cached, an implicit hit: no implicit price given, so the
    # cache-read price), 1,000 out: 100,000 x 1 + 200,000 x 0.1 + 1,000 x 5 = 125,000
    prices = table(
        MODEL_PRICES=json.dumps(
            {
                "dashscope": {
                    "qwen3-coder-plus": {
                        "input": 1.0,
                        "output": 5.0,
                        "cache_read": 0.1,
                        "cache_write": 1.25,
                        "currency": "USD",
                    }
                }
            }
        )
    )
    assert cost(
        prices=prices, prompt_tokens=300_000, completion_tokens=1_000, cached_tokens=200_000
    ) == Cost(0.125, "USD")


def test_model_prices_with_tiers_a_wildcard_and_a_removed_price(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "openrouter": {
                    "qwen/qwen3-coder-plus": {
                        "currency": "usd",
                        "tiers": [
                            {"up_to": 1_000, "input": 2, "output": 4},
                            {"input": 3, "output": 6, "cache_read": 1},
                        ],
                    },
                    "*": {"input": 0.5, "output": 0.5},
                },
                "dashscope": {"qwen3-coder-plus": None},
            }
        )
    )
    prices = table(MODEL_PRICES=str(path))
    # 1,000 x 2 + 10 x 4 = 2,040 -> $0.00204 (first tier)
    assert cost(
        "openrouter", "qwen/qwen3-coder-plus", prices, prompt_tokens=1_000, completion_tokens=10
    ) == Cost(0.00204, "USD")
    # 1,500 prompt, 1,000 cached at $1, 500 x 3 + 1,000 x 1 + 0 = 2,500 -> $0.0025
    assert cost(
        "openrouter",
        "qwen/qwen3-coder-plus",
        prices,
        prompt_tokens=1_500,
        completion_tokens=0,
        cached_tokens=1_000,
    ) == Cost(0.0025, "USD")
    # Any other model of the backend: the wildcard. 2,000 x 0.5 = 1,000 -> $0.001
    assert cost(
        "openrouter", "qwen/qwen3-max", prices, prompt_tokens=1_000, completion_tokens=1_000
    ) == Cost(0.001, "USD")
    # A built-in price set to null: unknown again.
    assert cost(prices=prices, prompt_tokens=10, completion_tokens=10) is None
    # The rest of the built-in table stays.
    assert cost(
        model="qwen3-coder-flash", prices=prices, prompt_tokens=10_000, completion_tokens=0
    ) == Cost(0.003, "USD")  # 10,000 x $0.3
