"""The model names coding agents send on their own vendor's doors (`claude-sonnet-4-6`,
`gpt-5-codex`, ...) and what the proxy serves them with (`ANTHROPIC_MODEL_MAP`). Our own
names (`backend:model`, aliases, route names) pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

# Names that belong to Anthropic's or OpenAI's own model families.
VENDOR_PATTERNS = (
    "claude-*",
    "claude",
    "sonnet*",
    "opus*",
    "haiku*",
    "gpt-*",
    "chatgpt-*",
    "o1*",
    "o3*",
    "o4*",
    "codex-*",
)


def is_vendor_model(name: str) -> bool:
    lowered = name.strip().lower()
    return any(fnmatchcase(lowered, pattern) for pattern in VENDOR_PATTERNS)


def map_vendor_model(name: str | None, model_map: Mapping[str, str]) -> str | None:
    """The model to ask the pipeline for, given the name a client sent.

    A pattern of `model_map` other than `*` that matches the name wins (in the map's
    order), for any name. Otherwise a vendor name goes to the `*` entry, or — with none —
    to `None`, which the pipeline serves with `DEFAULT_MODEL`. Other names pass through.
    """
    if not isinstance(name, str) or not name.strip():
        return None
    lowered = name.strip().lower()
    for pattern, target in model_map.items():
        if pattern != "*" and fnmatchcase(lowered, pattern.lower()):
            return target
    if is_vendor_model(lowered):
        return model_map.get("*")
    return name
