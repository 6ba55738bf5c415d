"""The Anthropic Messages API at the edge, the answer side: a chat.completion as a Message
(`to_message`), its stop reason and usage in Anthropic's terms (the stream uses them
too: stream.py), and errors in Anthropic's shape."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from qwenproxy.doors.anthropic.request import AnthropicRequest, new_tool_use_id
from qwenproxy.doors.tool_arguments import parse_tool_input
from qwenproxy.doors.translator import first_choice
from qwenproxy.errors import ContextLengthExceededError, ProxyError
from qwenproxy.ledger.records import cache_counts
from qwenproxy.pipeline.events import reasoning_text
from qwenproxy.pipeline.messages.content import content_text

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
}
# OpenAI-shaped error `type`s (ours, or an upstream's) that have an Anthropic twin.
_ERROR_TYPES_BY_OPENAI_TYPE = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "rate_limit_error": "rate_limit_error",
    "service_unavailable": "overloaded_error",
}
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# --- errors ---------------------------------------------------------------------------


def error_type_for_status(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def error_body_for(error: ProxyError) -> dict[str, Any]:
    """`error` in Anthropic's shape; a prompt too long in the words Claude Code knows."""
    if isinstance(error, ContextLengthExceededError):
        return error_body("invalid_request_error", error.anthropic_message())
    return error_body(error_type_for_status(error.status), error.message)


def error_body_from_openai(error: Mapping[str, Any]) -> dict[str, Any]:
    """An error the pipeline sent mid-stream (`{"message", "type", "code"}`)."""
    error_type = _ERROR_TYPES_BY_OPENAI_TYPE.get(str(error.get("type")), "api_error")
    return error_body(error_type, str(error.get("message") or "The upstream failed."))


# --- the answer -----------------------------------------------------------------------


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(12)


def usage_of(usage: Any) -> dict[str, int]:
    """Anthropic usage from OpenAI usage. OpenAI's `prompt_tokens` counts every prompt
    token; Anthropic's `input_tokens` only those neither read from the prompt cache nor
    written to it, which it reports apart (`cache_read_input_tokens`,
    `cache_creation_input_tokens`): the three add up to the prompt."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = _int(usage.get("prompt_tokens"))
    cached, written = cache_counts(usage)
    result = {
        "input_tokens": max(0, prompt - (cached or 0) - (written or 0)),
        "output_tokens": _int(usage.get("completion_tokens")),
    }
    if cached is not None:
        result["cache_read_input_tokens"] = cached
    if written is not None:
        result["cache_creation_input_tokens"] = written
    return result


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def stop_reason_of(
    finish_reason: Any, matched: Any, stop_sequences: tuple[str, ...], used_tools: bool
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). `matched` is the stop string some upstreams (vLLM)
    report in `choice.stop_reason`."""
    if isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    reason = STOP_REASONS.get(str(finish_reason), "end_turn")
    if used_tools and reason == "end_turn":
        reason = "tool_use"
    return reason, None


def to_message(completion: dict[str, Any], request: AnthropicRequest) -> dict[str, Any]:
    """A chat.completion as an Anthropic Message."""
    choice, message = first_choice(completion)
    content: list[dict[str, Any]] = []
    reasoning = reasoning_text(message) if request.thinking else ""
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = content_text(message.get("content"), separator="")
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or new_tool_use_id(),
                "name": function.get("name") or "",
                "input": parse_tool_input(function.get("arguments")),
            }
        )
    used_tools = any(block["type"] == "tool_use" for block in content)
    if not any(block["type"] != "thinking" for block in content):
        content.append({"type": "text", "text": ""})
    reason, sequence = stop_reason_of(
        choice.get("finish_reason"), choice.get("stop_reason"), request.stop_sequences, used_tools
    )
    return {
        "id": new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": request.model or completion.get("model") or "",
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_of(completion.get("usage")),
    }
