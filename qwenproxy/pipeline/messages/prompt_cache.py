"""Prompt caching: which backends take `cache_control` markers on chat content parts, how
many a request may carry, markers taken off again for backends that do not take them, and
the cache counts an upstream reports in its `usage`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Alibaba Cloud Model Studio's explicit context cache, on its OpenAI-compatible chat API
# (https://www.alibabacloud.com/help/en/model-studio/context-cache, updated 2026-10-11):
# `"cache_control": {"type": "ephemeral"}` on a content part of `messages`, at most 4
# markers per request, a cached block of at least 1,024 tokens, 5 minutes of life;
# creating one bills 125 % of the input price, a hit 10 % (implicit cache hits: 20 %).
# qwen-code puts the same marker on the last tool definition object as well
# (QwenLM/qwen-code packages/core/src/core/openaiContentGenerator/provider/dashscope.ts,
# `addCacheControlToTools`), and on the system message and the latest message, whatever
# its role, with string content turned into one text part.
EPHEMERAL: dict[str, str] = {"type": "ephemeral"}
MAX_MARKERS = 4

# Backends that take markers unless CACHE_MARKERS says otherwise. DashScope by its
# context-cache page; qwen-oauth and coding-plan because qwen-code sends markers to both
# (its `isDashScopeProvider` covers the qwen-oauth login and every *.dashscope.aliyuncs.com
# host, the Coding Plan's included). Backends not listed get none.
CACHE_MARKER_DEFAULTS: Mapping[str, bool] = {
    "dashscope": True,
    "qwen-oauth": True,
    "coding-plan": True,
}


def markers_enabled(backend: str, overrides: Mapping[str, bool]) -> bool:
    """Whether the proxy's own markers (the Anthropic door's) go to `backend`."""
    if backend in overrides:
        return overrides[backend]
    return CACHE_MARKER_DEFAULTS.get(backend, False)


def marker_of(block: Any) -> dict[str, str] | None:
    """The marker to forward for a client's block, or None. Anthropic's `ttl` has no
    documented form on Model Studio's chat API, so every marker goes as `ephemeral`."""
    if not isinstance(block, dict):
        return None
    control = block.get("cache_control")
    if isinstance(control, dict) and control.get("type") == "ephemeral":
        return dict(EPHEMERAL)
    return None


# --- counting and limiting -------------------------------------------------------------


def _marked(chat: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every dict that carries a marker, in prompt order as Anthropic counts it: tool
    definitions, then the system prompt, then the messages."""
    tools = chat.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict) and "cache_control" in tool:
                yield tool
    messages = chat.get("messages")
    if not isinstance(messages, list):
        return
    ordered = [m for m in messages if isinstance(m, dict) and m.get("role") == "system"]
    ordered += [m for m in messages if isinstance(m, dict) and m.get("role") != "system"]
    for message in ordered:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and "cache_control" in part:
                    yield part


def count_markers(chat: dict[str, Any]) -> int:
    return sum(1 for _ in _marked(chat))


def keep_last_markers(chat: dict[str, Any], limit: int = MAX_MARKERS) -> int:
    """Drop the earliest markers of `chat` (in place) beyond `limit`; how many went.
    The last ones end the longest cached prefixes, so they are the ones worth keeping."""
    marked = list(_marked(chat))
    extra = marked[: max(0, len(marked) - limit)]
    for holder in extra:
        del holder["cache_control"]
    return len(extra)


# --- taking them off again -------------------------------------------------------------


def without_markers(chat: dict[str, Any]) -> dict[str, Any]:
    """A copy of `chat` without cache markers, for a backend that does not take them.
    Content that only needed parts to carry a marker goes back to a plain string, as
    every upstream takes it: one text part becomes its text; a system message of text
    parts becomes their texts joined by blank lines. `chat` itself is not changed."""
    result = dict(chat)
    tools = chat.get("tools")
    if isinstance(tools, list) and any(isinstance(t, dict) and "cache_control" in t for t in tools):
        result["tools"] = [_unmarked(tool) for tool in tools]
    messages = chat.get("messages")
    if isinstance(messages, list):
        result["messages"] = [_message_without_markers(m) for m in messages]
    return result


def _unmarked(item: Any) -> Any:
    if isinstance(item, dict) and "cache_control" in item:
        return {key: value for key, value in item.items() if key != "cache_control"}
    return item


def _message_without_markers(message: Any) -> Any:
    if not isinstance(message, dict):
        return message
    content = message.get("content")
    if not isinstance(content, list) or not any(
        isinstance(part, dict) and "cache_control" in part for part in content
    ):
        return message
    parts = [_unmarked(part) for part in content]
    texts = [p.get("text") for p in parts if isinstance(p, dict) and p.get("type") == "text"]
    if len(texts) == len(parts) and all(isinstance(t, str) for t in texts):
        if message.get("role") == "system":
            return {**message, "content": "\n\n".join(texts)}
        if len(texts) == 1:
            return {**message, "content": texts[0]}
    return {**message, "content": parts}


def has_markers(content: Any) -> bool:
    """Whether message content (a list of parts) carries a marker."""
    return isinstance(content, list) and any(
        isinstance(part, dict) and "cache_control" in part for part in content
    )
