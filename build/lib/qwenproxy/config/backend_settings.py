"""The settings of the backends and their models: keys, base URLs and regions of the
built-in backends, Coding Plan's tier and quota windows, aliases, model facts, failover
routes, the vendor model map, cache markers and prices. Part of `settings.SETTINGS`."""

from __future__ import annotations

import logging

from qwenproxy.config.tables import (
    parse_aliases,
    parse_backend_switches,
    parse_model_info,
    parse_model_map,
    parse_prices,
    parse_quota_windows,
    parse_routes,
)
from qwenproxy.config.values import (
    Setting,
    parse_bool,
    parse_choice,
    parse_duration,
    parse_int,
    parse_keys,
    parse_url,
)

log = logging.getLogger(__name__)



BACKEND_SETTINGS: tuple[Setting, ...] = (
    Setting("DASHSCOPE_API_KEY", "dashscope_api_keys", None, parse_keys, "DashScope API key(s)"),
    Setting(
        "DASHSCOPE_REGION",
        "dashscope_region",
        "intl",
        parse_choice("intl", "cn", "us"),
        "DashScope region",
    ),
    Setting(
        "DASHSCOPE_BASE_URL", "dashscope_base_url", None, parse_url, "DashScope base URL override"
    ),
    Setting(
        "CODING_PLAN_API_KEY",
        "coding_plan_api_keys",
        None,
        parse_keys,
        "Alibaba Cloud Coding Plan key(s) (sk-sp-...)",
    ),
    Setting(
        "CODING_PLAN_REGION",
        "coding_plan_region",
        "intl",
        parse_choice("intl", "cn"),
        "Coding Plan region",
    ),
    Setting(
        "CODING_PLAN_BASE_URL",
        "coding_plan_base_url",
        None,
        parse_url,
        "Coding Plan base URL override",
    ),
    Setting(
        "CODING_PLAN_TIER",
        "coding_plan_tier",
        "pro",
        parse_choice("pro", "lite", "none"),
        "Coding Plan tier whose request windows apply by default (none: no windows)",
    ),
    Setting(
        "QUOTA_WINDOWS",
        "quota_windows",
        None,
        parse_quota_windows,
        "request windows per upstream key, by backend (JSON or a file path)",
    ),
    Setting("OPENROUTER_API_KEY", "openrouter_api_keys", None, parse_keys, "OpenRouter key(s)"),
    Setting(
        "OPENROUTER_BASE_URL",
        "openrouter_base_url",
        None,
        parse_url,
        "OpenRouter base URL override",
    ),
    Setting("FIREWORKS_API_KEY", "fireworks_api_keys", None, parse_keys, "Fireworks AI key(s)"),
    Setting(
        "FIREWORKS_BASE_URL", "fireworks_base_url", None, parse_url, "Fireworks base URL override"
    ),
    Setting(
        "MODEL_ALIASES",
        "model_aliases",
        None,
        parse_aliases,
        "per-backend alias table (JSON or a file path)",
    ),
    Setting(
        "MODEL_INFO",
        "model_info",
        None,
        parse_model_info,
        "per-backend context windows and output limits (JSON or a file path)",
    ),
    Setting(
        "CONTEXT_GUARD",
        "context_guard",
        "true",
        parse_bool,
        "answer prompts longer than the model's window locally, before any upstream call",
    ),
    Setting(
        "CONTEXT_MIN_OUTPUT_TOKENS",
        "context_min_output_tokens",
        "1024",
        lambda n, v: parse_int(n, v, 1, 1_000_000),
        "room for the answer below which a prompt counts as too long",
    ),
    Setting(
        "MODEL_LIST_REFRESH",
        "model_list_refresh",
        "6h",
        lambda n, v: 0.0 if v.strip().lower() in ("0", "off", "false") else parse_duration(n, v),
        "how often the upstreams' model lists are read (0: never)",
    ),
    Setting(
        "FAILOVER_ROUTES",
        "failover_routes",
        None,
        parse_routes,
        "failover routes declared at start-up (JSON or a file path)",
    ),
    Setting(
        "ANTHROPIC_MODEL_MAP",
        "anthropic_model_map",
        None,
        parse_model_map,
        "model for vendor model names (claude-*, gpt-*) on /v1/messages and /v1/responses",
    ),
    Setting(
        "CACHE_MARKERS",
        "cache_markers",
        None,
        parse_backend_switches,
        "per backend: forward the Anthropic door's cache_control markers (JSON or a file)",
    ),
    Setting(
        "MODEL_PRICES",
        "model_prices",
        None,
        parse_prices,
        "per-backend price table per million tokens (JSON or a file)",
    ),
)
