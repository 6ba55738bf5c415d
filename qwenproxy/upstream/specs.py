"""Which backends a configuration enables, where they are, and which is the default.

Pure configuration: no network and no `requests` import, so the `serve` banner can use it
in gunicorn's master before gevent patches the workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qwenproxy.config import Config
from qwenproxy.upstream import catalogue as catalog
from qwenproxy.upstream.catalogue import ModelCatalog

# Order in which key backends become the default when LLM_BACKEND is not set.
KEY_BACKEND_PREFERENCE = ("coding-plan", "dashscope", "openrouter", "fireworks")


@dataclass(frozen=True)
class BackendSpec:
    """A backend this configuration enables: where it is and with which keys."""

    name: str
    base_url: str
    keys: tuple[str, ...]
    catalog: ModelCatalog
    headers: dict[str, str] = field(default_factory=dict)


def key_backend_specs(config: Config) -> list[BackendSpec]:
    """Every API-key backend whose key (or, for custom ones, base URL) is configured."""
    aliases = config.model_aliases
    presets = [
        (
            "coding-plan",
            config.coding_plan_base_url or catalog.CODING_PLAN_BASE_URLS[config.coding_plan_region],
            config.coding_plan_api_keys,
            ModelCatalog(catalog.CODING_PLAN_MODELS, catalog.CODING_PLAN_ALIASES),
            {},
        ),
        (
            "dashscope",
            config.dashscope_base_url or catalog.DASHSCOPE_BASE_URLS[config.dashscope_region],
            config.dashscope_api_keys,
            ModelCatalog(catalog.DASHSCOPE_MODELS, catalog.DASHSCOPE_ALIASES),
            {},
        ),
        (
            "openrouter",
            config.openrouter_base_url or catalog.OPENROUTER_BASE_URL,
            config.openrouter_api_keys,
            ModelCatalog(catalog.OPENROUTER_MODELS, catalog.OPENROUTER_ALIASES),
            dict(catalog.OPENROUTER_HEADERS),
        ),
        (
            "fireworks",
            config.fireworks_base_url or catalog.FIREWORKS_BASE_URL,
            config.fireworks_api_keys,
            ModelCatalog(catalog.FIREWORKS_MODELS, catalog.FIREWORKS_ALIASES),
            {},
        ),
    ]
    specs = [
        BackendSpec(name, base, keys, cat.with_overrides(aliases.get(name)), headers)
        for name, base, keys, cat, headers in presets
        if keys
    ]
    specs += [
        BackendSpec(
            custom.name,
            custom.base_url,
            custom.api_keys,
            ModelCatalog(custom.models).with_overrides(aliases.get(custom.name)),
        )
        for custom in config.custom_backends
    ]
    return specs


def qwen_oauth_available(config: Config) -> bool:
    return any(path.is_file() for path in config.qwen_oauth_creds)


def effective_default_backend(config: Config, enabled: list[str]) -> str:
    """LLM_BACKEND when set; else qwen-oauth if logged in; else the first key backend."""
    if config.sources.get("LLM_BACKEND", "default") != "default" or qwen_oauth_available(config):
        return config.llm_backend
    for name in (*KEY_BACKEND_PREFERENCE, *enabled):
        if name in enabled:
            return name
    return config.llm_backend
