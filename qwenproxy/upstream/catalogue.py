"""Backend presets and model catalogues: base URLs, model lists and per-backend alias
tables (the name a client sends -> the name the upstream receives).
Defaults reflect what each upstream accepts as of late 2026; operators override or extend
the aliases with MODEL_ALIASES and the base URLs with <PRESET>_BASE_URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# qwen-code 0.24.4 sends `coder-model` on its OAuth path (Qwen 3.7 Max, with vision;
# packages/core/src/models/constants.ts); the seed's and older clients' names map to it.
QWEN_OAUTH_MODELS = (
    "coder-model",
    "qwen3-coder-plus",
    "qwen3-coder-flash",
    "vision-model",
    "qwen-turbo",
    "qwen-plus",
    "qwen-max",
    "qwen2.5-coder-32b-instruct",
    "qwen2.5-coder-14b-instruct",
    "qwen2.5-coder-7b-instruct",
    "qwen2.5-72b-instruct",
    "qwen2.5-32b-instruct",
    "qwen2.5-14b-instruct",
    "qwen2.5-7b-instruct",
)
QWEN_OAUTH_ALIASES = {
    "qwen3-coder-plus": "coder-model",
    "qwen3-coder-flash": "coder-model",
    "vision-model": "coder-model",
}

# DashScope (Alibaba Cloud Model Studio) OpenAI-compatible mode, by region.
DASHSCOPE_BASE_URLS = {
    "intl": "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
    "cn": "https://dashscope.aliyuncs.com/compatible-mode/v1",
    "us": "https://dashscope-us.aliyuncs.com/compatible-mode/v1",
}
DASHSCOPE_MODELS = (
    "qwen3-coder-plus",
    "qwen3-coder-flash",
    "qwen3-coder-next",
    "qwen3-max",
    "qwen3.5-plus",
    "qwen-plus",
    "qwen-turbo",
    "qwen-max",
)
DASHSCOPE_ALIASES = {"coder-model": "qwen3-coder-plus", "vision-model": "qwen3-vl-plus"}

# Alibaba Cloud Coding Plan (keys `sk-sp-...`; qwen-code's alibaba-coding-plan preset).
CODING_PLAN_BASE_URLS = {
    "intl": "https://coding-intl.dashscope.aliyuncs.com/v1",
    "cn": "https://coding.dashscope.aliyuncs.com/v1",
}
CODING_PLAN_MODELS = (
    "qwen3-coder-plus",
    "qwen3-coder-next",
    "qwen3.5-plus",
    "qwen3.7-plus",
    "qwen3-max-2026-01-23",
    "glm-5",
    "glm-4.7",
    "kimi-k2.5",
    "MiniMax-M2.5",
)
CODING_PLAN_ALIASES = {
    "coder-model": "qwen3-coder-plus",
    "qwen3-coder-flash": "qwen3-coder-next",
    "qwen3-max": "qwen3-max-2026-01-23",
}

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
OPENROUTER_MODELS = (
    "qwen/qwen3-coder",
    "qwen/qwen3-coder-plus",
    "qwen/qwen3-coder-flash",
    "qwen/qwen3-coder-next",
    "qwen/qwen3-max",
)
OPENROUTER_ALIASES = {
    "qwen3-coder-plus": "qwen/qwen3-coder-plus",
    "qwen3-coder-flash": "qwen/qwen3-coder-flash",
    "qwen3-coder": "qwen/qwen3-coder",
    "qwen3-coder-next": "qwen/qwen3-coder-next",
    "qwen3-max": "qwen/qwen3-max",
    "coder-model": "qwen/qwen3-coder-plus",
}
# OpenRouter's app attribution header (openrouter.ai/docs/features/app-attribution).
OPENROUTER_HEADERS = {"X-OpenRouter-Title": "qwenproxy", "X-Title": "qwenproxy"}

FIREWORKS_BASE_URL = "https://api.fireworks.ai/inference/v1"
FIREWORKS_MODELS = (
    "accounts/fireworks/models/qwen3-coder-480b-a35b-instruct",
    "accounts/fireworks/models/qwen3-coder-30b-a3b-instruct",
)
FIREWORKS_ALIASES = {
    "qwen3-coder-plus": "accounts/fireworks/models/qwen3-coder-480b-a35b-instruct",
    "qwen3-coder": "accounts/fireworks/models/qwen3-coder-480b-a35b-instruct",
    "coder-model": "accounts/fireworks/models/qwen3-coder-480b-a35b-instruct",
    "qwen3-coder-flash": "accounts/fireworks/models/qwen3-coder-30b-a3b-instruct",
}

# qwen-code's own client identity (packages/core/src/core/openaiContentGenerator/provider/
# dashscope.ts): `QwenCode/<version> (<node platform>; <node arch>)`. Requests that do not
# look like qwen-code's are reported to be throttled, so this is the default.
QWEN_CODE_VERSION = "0.24.4"
_NODE_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}


def qwen_code_user_agent() -> str:
    import platform
    import sys

    arch = platform.machine().lower()
    return f"QwenCode/{QWEN_CODE_VERSION} ({sys.platform}; {_NODE_ARCH.get(arch, arch)})"


# Which key enables which backend: for start-up messages, errors and `doctor`.
BACKEND_KEY_HINTS = {
    "qwen-oauth": "a qwen-code login (QWEN_OAUTH_CREDS, `python -m qwenproxy auth login`)",
    "dashscope": "DASHSCOPE_API_KEY (DashScope / Model Studio key; DASHSCOPE_REGION=intl|cn|us)",
    "coding-plan": "CODING_PLAN_API_KEY (Alibaba Cloud Coding Plan key sk-sp-...)",
    "openrouter": "OPENROUTER_API_KEY",
    "fireworks": "FIREWORKS_API_KEY",
}


def key_backends_hint() -> str:
    return (
        "; ".join(
            f"{name}: set {hint}"
            for name, hint in BACKEND_KEY_HINTS.items()
            if name != "qwen-oauth"
        )
        + "; or any OpenAI-compatible upstream with BACKEND_<NAME>_BASE_URL and _API_KEY"
    )


@dataclass(frozen=True)
class ModelCatalog:
    """One backend's model list and alias table."""

    models: tuple[str, ...] = ()
    aliases: Mapping[str, str] = field(default_factory=dict)

    def upstream_name(self, name: str) -> str:
        return self.aliases.get(name, name)

    def listed(self) -> list[str]:
        """Real names first, then aliases that are not also real names."""
        seen = dict.fromkeys(self.models)
        for alias in self.aliases:
            seen.setdefault(alias)
        return list(seen)

    def with_overrides(self, overrides: Mapping[str, str] | None) -> ModelCatalog:
        if not overrides:
            return self
        return ModelCatalog(self.models, {**self.aliases, **overrides})
