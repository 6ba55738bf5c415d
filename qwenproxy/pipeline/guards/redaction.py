"""`SecretRedactor`: replaces API keys (by their providers' formats) and the proxy's own
configured secrets in outgoing messages before they reach an upstream, cheaply enough for
the hot path.
"""

from __future__ import annotations

import re
from typing import Any

from qwenproxy.config.secrets import KnownSecrets
from qwenproxy.pipeline.messages.content import ANY_TYPE, TEXT_PART_TYPES, is_text_part

PLACEHOLDER = "(API_KEY_HAS_BEEN_REDACTED)"

_KEY = "[A-Za-z0-9_-]"  # the characters of most key bodies
_DIGIT = r"(?=[A-Za-z0-9_.-]*[0-9])"  # the body holds a digit: random keys do, words don't


def _key_pattern(source: str) -> re.Pattern[str]:
    return re.compile(source, re.ASCII)


# Well-known key formats, one entry each: add a line to cover a new one. Patterns are ASCII
# (compiled with re.ASCII, so a key followed by Chinese text still ends at a word boundary).
# Each starts with its literal prefix and no leading \b (that would stop the regex engine
# from skipping ahead to the prefix's first character, about 4x slower); the redactor
# instead skips matches that start inside a longer word. Minimum lengths keep words out.
SECRET_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (
        "private_key",
        _key_pattern(
            r"-----BEGIN[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----"
            r"(?:[\s\S]*?-----END[A-Z0-9 ]{0,40} PRIVATE KEY(?: BLOCK)?-----"
            r"|(?:(?:\s|\\[nr])+[A-Za-z0-9+/=]{16,})*)"  # no END (cut short): its base64 lines
        ),
    ),
    ("anthropic", _key_pattern(r"sk-ant-" + _DIGIT + _KEY + "{20,}")),
    ("openrouter", _key_pattern(r"sk-or-v1-[A-Za-z0-9]{32,}")),
    ("coding_plan", _key_pattern(r"sk-sp-" + _DIGIT + _KEY + r"{16,}(?:\." + _KEY + "+)*")),
    ("openai_project", _key_pattern(r"sk-(?:proj|svcacct|admin)-" + _DIGIT + _KEY + "{20,}")),
    ("openai", _key_pattern(r"sk-[A-Za-z0-9]{40,}\b")),
    ("dashscope", _key_pattern(r"sk-[0-9a-f]{32}\b")),
    ("aws_access_key_id", _key_pattern(r"(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("github_token", _key_pattern(r"gh[pousr]_[A-Za-z0-9]{36,}\b")),
    ("github_pat", _key_pattern(r"github_pat_" + _DIGIT + r"[A-Za-z0-9_]{22,}")),
    ("google_api_key", _key_pattern(r"AIza" + _KEY + "{35}(?!" + _KEY + ")")),
    ("slack_token", _key_pattern(r"xox[bpoas]-[0-9]+-[A-Za-z0-9-]{8,}")),
    ("fireworks", _key_pattern(r"fw_" + _DIGIT + r"[A-Za-z0-9]{20,}\b")),
]

# The shortest text any pattern above can match (xoxb-1- and 8 more): shorter texts are
# skipped unless a configured secret is shorter still. Keep in step with SECRET_PATTERNS.
SHORTEST_PATTERN_MATCH = 15


def _secret_pattern() -> re.Pattern[str]:
    """SECRET_PATTERNS as one alternation: one pass over a text finds any of them."""
    return _key_pattern("|".join(f"(?:{pattern.pattern})" for _, pattern in SECRET_PATTERNS))


def _starts_inside_word(text: str, start: int) -> bool:
    """True if text[start] continues a word (so a match there is part of something longer).
    A JSON escape such as \\n just before counts as a break, as in tool-call arguments."""
    if start == 0:
        return False
    before = text[start - 1]
    if not (before.isascii() and (before.isalnum() or before == "_")):
        return False
    return not (start >= 2 and text[start - 2] == "\\" and before in "nrtbf")


class SecretRedactor:
    """Replaces API keys (SECRET_PATTERNS) and the proxy's own configured secrets with
    PLACEHOLDER in the text that is about to leave for an upstream. The configured
    secrets are `known` (config/secrets.py), the matcher the log filter uses too."""

    def __init__(self, known: KnownSecrets | None = None) -> None:
        self._known = known if known is not None else KnownSecrets()
        self._pattern = _secret_pattern()

    def redact_text(self, text: str) -> tuple[str, int]:
        """(text with secrets replaced, number of replacements)."""
        return self._redact(text)

    def redact_messages(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """Redact chat messages: string content, text parts, tool-call arguments and tool
        results. Never mutates the input: returns the same list when nothing changed, else
        a new list where only the changed messages (and the dicts inside them that changed)
        are copies."""
        result: list[dict[str, Any]] | None = None
        total = 0
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                continue
            changed, count = self._redact_message(message)
            if count:
                if result is None:
                    result = list(messages)
                result[index] = changed
                total += count
        return (messages if result is None else result), total

    def _redact_message(self, message: dict[str, Any]) -> tuple[dict[str, Any], int]:
        total = 0
        updates: dict[str, Any] = {}
        content = message.get("content")
        if isinstance(content, str):
            new_text, count = self._redact(content)
            if count:
                updates["content"], total = new_text, total + count
        elif isinstance(content, list):
            any_text = message.get("role") == "tool"
            new_parts, count = self._redact_parts(content, any_text)
            if count:
                updates["content"], total = new_parts, total + count
        tool_calls = message.get("tool_calls")
        if isinstance(tool_calls, list):
            new_calls, count = self._redact_tool_calls(tool_calls)
            if count:
                updates["tool_calls"], total = new_calls, total + count
        if not total:
            return message, 0
        return {**message, **updates}, total

    def _redact_parts(self, parts: list[Any], any_text: bool) -> tuple[list[Any], int]:
        result: list[Any] | None = None
        total = 0
        for index, part in enumerate(parts):
            if not is_text_part(part, ANY_TYPE if any_text else TEXT_PART_TYPES):
                continue
            new_text, count = self._redact(part["text"])
            if count:
                if result is None:
                    result = list(parts)
                result[index] = {**part, "text": new_text}
                total += count
        return (parts if result is None else result), total

    def _redact_tool_calls(self, calls: list[Any]) -> tuple[list[Any], int]:
        result: list[Any] | None = None
        total = 0
        for index, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
                continue
            new_arguments, count = self._redact(function["arguments"])
            if count:
                if result is None:
                    result = list(calls)
                result[index] = {**call, "function": {**function, "arguments": new_arguments}}
                total += count
        return (calls if result is None else result), total

    def _redact(self, text: str) -> tuple[str, int]:
        shortest = min(SHORTEST_PATTERN_MATCH, self._known.shortest or SHORTEST_PATTERN_MATCH)
        if len(text) < shortest:
            return text, 0
        text, total = self._known.replace(text, PLACEHOLDER)
        if self._pattern.search(text) is None:
            return text, total
        replaced = 0

        def replace(match: re.Match[str]) -> str:
            nonlocal replaced
            if _starts_inside_word(match.string, match.start()):
                return match.group()
            replaced += 1
            return PLACEHOLDER

        text = self._pattern.sub(replace, text)
        return text, total + replaced
