"""What a request cost: a price table per backend and model (input, output, cache read
and cache write per million tokens, prompt-length tiers, a currency) from the public price
pages, overridden by MODEL_PRICES, and the cost of one request's token counts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qwenproxy.config import Config

PER_MILLION = 1_000_000


@dataclass(frozen=True)
class PriceTier:
    """Prices per million tokens for prompts of up to `up_to` tokens (None: any length)."""

    up_to: int | None
    input: float
    output: float
    cache_read: float | None = None  # a hit on an explicit (marker-made) cache
    cache_write: float | None = None  # tokens written to an explicit cache
    implicit_cache_read: float | None = None  # a hit on an implicit (automatic) cache

    def hit_price(self, explicit: bool) -> float:
        """Per million cached tokens: an explicit hit's price, or an implicit hit's when
        one is known; a price that was not given bills at the input price."""
        if not explicit and self.implicit_cache_read is not None:
            return self.implicit_cache_read
        return self.input if self.cache_read is None else self.cache_read

    def write_price(self) -> float:
        return self.input if self.cache_write is None else self.cache_write


@dataclass(frozen=True)
class ModelPrice:
    currency: str
    tiers: tuple[PriceTier, ...]

    def tier_for(self, prompt_tokens: int) -> PriceTier:
        """The tier a prompt of that many tokens bills at (the provider tiers by the
        request's whole prompt, cached tokens included); past the last bound, the last."""
        for tier in self.tiers:
            if tier.up_to is None or prompt_tokens <= tier.up_to:
                return tier
        return self.tiers[-1]


def _flat(currency: str, input: float, output: float, **cache: float) -> ModelPrice:
    return ModelPrice(currency, (PriceTier(None, input, output, **cache),))


def _model_studio(currency: str, *tiers: tuple[int | None, float, float]) -> ModelPrice:
    """Model Studio's tiers, with its cache prices: an explicit cache's hit 10 % of the
    input price, its creation 125 %, an implicit hit 20 %
    (https://www.alibabacloud.com/help/en/model-studio/context-cache, updated 2026-10-11)."""
    return ModelPrice(
        currency,
        tuple(
            PriceTier(
                up_to,
                input,
                output,
                cache_read=round(input * 0.10, 6),
                cache_write=round(input * 1.25, 6),
                implicit_cache_read=round(input * 0.20, 6),
            )
            for up_to, input, output in tiers
        ),
    )


# Model Studio bills each request at the tier of its prompt's length ("0<Token≤32K" ...);
# the tier bounds are taken as 32,000 / 128,000 / 256,000 tokens.
#
# International (Singapore) deployment, USD per million tokens: the Model Studio price page
# https://www.alibabacloud.com/help/en/model-studio/model-pricing, as transcribed by
# models.dev (anomalyco/models.dev providers/alibaba/models/*.toml, which cites that page,
# accessed 2026-08-26); qwen3-coder-plus' first tier ($1 / $5) is also the example of
# issue 16. Other models and the US region have no built-in price: their cost is unknown
# (null) until MODEL_PRICES gives one.
_DASHSCOPE_INTL: dict[str, ModelPrice] = {
    "qwen3-coder-plus": _model_studio(
        "USD", (32_000, 1.0, 5.0), (128_000, 1.8, 9.0), (256_000, 3.0, 15.0), (None, 6.0, 60.0)
    ),
    "qwen3-coder-flash": _model_studio(
        "USD", (32_000, 0.3, 1.5), (128_000, 0.5, 2.5), (256_000, 0.8, 4.0), (None, 1.6, 9.6)
    ),
    "qwen3-max": _model_studio("USD", (32_000, 1.2, 6.0), (128_000, 2.4, 12.0), (None, 3.0, 15.0)),
}
# Mainland China (Beijing), CNY per million tokens (the page gives CNY per thousand):
# https://help.aliyun.com/zh/model-studio/user-guide/qwen-coder ("qwen3-coder-plus系列",
# "qwen3-coder-flash系列"; its context cache: implicit hits 20 %, explicit hits 10 %).
_DASHSCOPE_CN: dict[str, ModelPrice] = {
    "qwen3-coder-plus": _model_studio(
        "CNY", (32_000, 4.0, 16.0), (128_000, 6.0, 24.0), (256_000, 10.0, 40.0), (None, 20.0, 200.0)
    ),
    "qwen3-coder-flash": _model_studio(
        "CNY", (32_000, 1.0, 4.0), (128_000, 1.5, 6.0), (256_000, 2.5, 10.0), (None, 5.0, 25.0)
    ),
}

# Backends paid by subscription or not at all: every model costs 0 per token. The Coding
# Plan is a monthly plan with request quotas (README, Backends); the qwen-code OAuth tier
# never billed per token (and ended on 2026-04-15).
_FREE_PER_TOKEN = {"coding-plan", "qwen-oauth"}
ANY_MODEL = "*"


def builtin_prices(config: Config) -> dict[str, dict[str, ModelPrice]]:
    """The built-in table for this configuration (DashScope's prices depend on its region)."""
    tables: dict[str, dict[str, ModelPrice]] = {}
    if config.dashscope_region == "intl":
        tables["dashscope"] = dict(_DASHSCOPE_INTL)
    elif config.dashscope_region == "cn":
        tables["dashscope"] = dict(_DASHSCOPE_CN)
    coding_currency = "CNY" if config.coding_plan_region == "cn" else "USD"
    tables["coding-plan"] = {ANY_MODEL: _flat(coding_currency, 0.0, 0.0)}
    tables["qwen-oauth"] = {ANY_MODEL: _flat("USD", 0.0, 0.0)}
    return tables


def _from_setting(spec: Mapping[str, Any]) -> ModelPrice:
    return ModelPrice(
        str(spec["currency"]),
        tuple(
            PriceTier(
                tier.get("up_to"),
                tier["input"],
                tier["output"],
                cache_read=tier.get("cache_read"),
                cache_write=tier.get("cache_write"),
                implicit_cache_read=tier.get("implicit_cache_read"),
            )
            for tier in spec["tiers"]
        ),
    )


@dataclass(frozen=True)
class Cost:
    amount: float
    currency: str


class PriceTable:
    """Prices per backend and upstream model; `cost` of one request's token counts."""

    def __init__(self, tables: Mapping[str, Mapping[str, ModelPrice | None]]) -> None:
        self._tables = {backend: dict(models) for backend, models in tables.items()}

    @classmethod
    def for_config(cls, config: Config) -> PriceTable:
        """The built-in table with MODEL_PRICES over it (a model set to null there has no
        price: its cost is unknown)."""
        tables: dict[str, dict[str, ModelPrice | None]] = dict(builtin_prices(config))
        for backend, models in config.model_prices.items():
            table = dict(tables.get(backend, {}))
            for model, spec in models.items():
                table[model] = None if spec is None else _from_setting(spec)
            tables[backend] = table
        return cls(tables)

    def price(self, backend: str, model: str) -> ModelPrice | None:
        table = self._tables.get(backend)
        if not table:
            return None
        if model in table:
            return table[model]
        return table.get(ANY_MODEL)

    def cost(
        self,
        backend: str,
        model: str,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        cached_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        explicit_cache: bool = False,
    ) -> Cost | None:
        """What the tokens cost, or None when the price or the counts are unknown.
        `cached_tokens` and `cache_write_tokens` are part of `prompt_tokens`: cached ones
        bill at the cache-read price, written ones at the cache-write price, the rest of
        the prompt at the input price."""
        if prompt_tokens is None or completion_tokens is None:
            return None
        price = self.price(backend, model)
        if price is None:
            return None
        tier = price.tier_for(prompt_tokens)
        cached = min(cached_tokens or 0, prompt_tokens)
        written = min(cache_write_tokens or 0, prompt_tokens - cached)
        uncached = prompt_tokens - cached - written
        amount = (
            uncached * tier.input
            + cached * tier.hit_price(explicit_cache)
            + written * tier.write_price()
            + completion_tokens * tier.output
        ) / PER_MILLION
        return Cost(round(amount, 10), price.currency)
