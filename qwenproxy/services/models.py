"""Model catalogues of the built-in backends (what `/v1/models` lists for them)."""

from __future__ import annotations

# Names qwen-code users know. qwen-code sends `coder-model` on its OAuth path today
# (QwenLM/qwen-code packages/core/src/models/constants.ts); older releases and guides use
# the qwen3-coder names, and older DashScope-compatible clients the qwen-*/qwen2.5-* ids.
QWEN_OAUTH_MODELS = [
    "qwen3-coder-plus",
    "qwen3-coder-flash",
    "coder-model",
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
]
