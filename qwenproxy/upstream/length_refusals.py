"""How upstreams refuse a prompt longer than the model's window, read from their words:
the refusal becomes the same `ContextLengthExceededError` the context guard raises before
a call, with the window and the prompt's size where the words say them.
"""

from __future__ import annotations

import re

from qwenproxy.errors import ContextLengthExceededError

# How upstreams word a refusal for length (each with its source):
# - DashScope / Model Studio and the Coding Plan: 400 "Range of input length should be
#   [1, N]" (Model Studio error codes, https://www.alibabacloud.com/help/en/model-studio/
#   error-code, InvalidParameter);
# - vLLM (OpenAI-compatible server, serving_engine.py): "This model's maximum context
#   length is N tokens. However, you requested M tokens (P in the messages, C in the
#   completion)", and newer "... maximum context length is N tokens and your request has
#   P input tokens";
# - OpenRouter: "This endpoint's maximum context length is N tokens. However, you
#   requested about M tokens";
# - OpenAI itself: code `context_length_exceeded`; any upstream: HTTP 413.
_LIMIT_PATTERNS = (
    re.compile(r"range of input length should be \[\s*\d+\s*,\s*(\d+)\s*\]", re.I),
    re.compile(r"maximum context length is (\d+) tokens", re.I),
    re.compile(r"maximum (?:model|context) length of (\d+)", re.I),
    re.compile(r"context (?:window|length) (?:of|is) (\d+) tokens", re.I),
)
_PROMPT_PATTERNS = (
    re.compile(r"\((\d+) in the messages", re.I),
    re.compile(r"your request has (\d+) input tokens", re.I),
    re.compile(r"your messages resulted in (\d+) tokens", re.I),
    re.compile(r"prompt \(length (\d+)\)", re.I),
    re.compile(r"you requested (?:about )?(\d+) tokens", re.I),
)
_LENGTH_WORDS = re.compile(
    r"range of input length|maximum context length|context_length_exceeded|"
    r"prompt is too long|input is too long|exceeds? the (?:model'?s? )?(?:maximum )?context",
    re.I,
)


def context_refusal(
    status: int, message: str, code: str | None = None
) -> ContextLengthExceededError | None:
    """The error a client should see when an upstream refused a request for its length;
    None when the refusal is about something else."""
    if status != 413 and code != "context_length_exceeded" and not _LENGTH_WORDS.search(message):
        return None
    limit = _first_number(_LIMIT_PATTERNS, message)
    prompt = _first_number(_PROMPT_PATTERNS, message)
    return ContextLengthExceededError(prompt, limit, detail=message[:300])


def _first_number(patterns: tuple[re.Pattern[str], ...], text: str) -> int | None:
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            return int(match.group(1))
    return None
