"""Qwen's system message: one, first, as a string. `merge_system_messages` folds every
system/developer message of a chat request into one leading system message (keeping text
parts with their cache_control markers where a client marked them).
"""

from __future__ import annotations

from typing import Any

from qwenproxy.pipeline.messages.content import SYSTEM_ROLES, content_text, is_text_part
from qwenproxy.pipeline.messages.prompt_cache import has_markers


def merge_system_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Qwen takes one system message, first, as a string: fold every system/developer
    message into one leading system message. Returns `messages` itself when it already fits.
    System text that carries cache_control markers stays text parts, markers on them (Model
    Studio's context cache takes a system message of parts; pipeline/messages/prompt_cache.py).
    """
    if not messages:
        return messages
    first = messages[0]
    extra = any(m.get("role") in SYSTEM_ROLES for m in messages[1:])
    if not extra and (
        first.get("role") != "developer"
        and (
            first.get("role") != "system"
            or isinstance(first.get("content"), str)
            or has_markers(first.get("content"))
        )
    ):
        return messages
    systems = [m for m in messages if m.get("role") in SYSTEM_ROLES]
    merged: dict[str, Any] = {"role": "system"}
    if any(has_markers(m.get("content")) for m in systems):
        merged["content"] = [part for m in systems for part in _system_parts(m.get("content"))]
    else:
        texts = [content_text(m.get("content")) for m in systems]
        merged["content"] = "\n\n".join(t for t in texts if t)
    return [merged, *(m for m in messages if m.get("role") not in SYSTEM_ROLES)]


def _system_parts(content: Any) -> list[dict[str, Any]]:
    """A system message's text as text parts, keeping the markers of marked ones."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    parts = []
    for part in content if isinstance(content, list) else ():
        if is_text_part(part):
            text = {"type": "text", "text": part["text"]}
            if "cache_control" in part:
                text["cache_control"] = part["cache_control"]
            parts.append(text)
    return parts
