"""The Responses API's answer: the pipeline's chat.completion as a `response` object, and
the items, parts and usage both it and the stream translator (stream.py) build."""

from __future__ import annotations

import secrets
import time
from typing import Any

from qwenproxy.doors.responses.request import ResponsesRequest
from qwenproxy.doors.tool_arguments import ArgumentStream, parse_tool_input
from qwenproxy.doors.translator import first_choice
from qwenproxy.pipeline.events import reasoning_text
from qwenproxy.pipeline.messages.content import content_text


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def usage_of(usage: Any) -> dict[str, Any]:
    usage = usage if isinstance(usage, dict) else {}
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _int(
                prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else 0
            )
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": _int(
                completion_details.get("reasoning_tokens")
                if isinstance(completion_details, dict)
                else 0
            )
        },
        "total_tokens": _int(usage.get("total_tokens")) or prompt + completion,
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_object(
    request: ResponsesRequest,
    response_id: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    incomplete_reason: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    echo = request.echo
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "instructions": echo.get("instructions"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "model": request.model,
        "output": output,
        "parallel_tool_calls": echo.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": echo.get("reasoning") or {"effort": None, "summary": None},
        "store": False,
        "temperature": echo.get("temperature"),
        "text": echo.get("text") or {"format": {"type": "text"}},
        "tool_choice": echo.get("tool_choice", "auto"),
        "tools": echo.get("tools", []),
        "top_p": echo.get("top_p"),
        "truncation": "disabled",
        "usage": usage,
        "user": echo.get("user"),
        "metadata": echo.get("metadata", {}),
    }


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [text_part(text)],
    }


def reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    """A thinking model's reasoning as a `reasoning` item (its text as `reasoning_text`)."""
    return {
        "type": "reasoning",
        "id": item_id,
        "status": status,
        "summary": [],
        "content": [reasoning_part(text)] if text else [],
    }


def reasoning_part(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(
    request: ResponsesRequest,
    item_id: str,
    call_id: str,
    upstream_name: str,
    arguments: str,
    status: str,
) -> dict[str, Any]:
    """A function_call item, or a custom_tool_call for a free-form tool; with the
    `namespace` of a namespaced tool."""
    namespace, name, kind = request.tool_of(upstream_name)
    if kind == "custom":
        value = parse_tool_input(arguments).get("input")
        item: dict[str, Any] = {
            "type": "custom_tool_call",
            "id": item_id,
            "call_id": call_id,
            "name": name,
            "input": value if isinstance(value, str) else arguments,
            "status": status,
        }
    else:
        item = {
            "type": "function_call",
            "id": item_id,
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
            "status": status,
        }
    if namespace:
        item["namespace"] = namespace
    return item


def to_response(completion: dict[str, Any], request: ResponsesRequest) -> dict[str, Any]:
    """A chat.completion as a `response` object."""
    choice, message = first_choice(completion)
    reason = INCOMPLETE_REASONS.get(str(choice.get("finish_reason")))
    item_status = "incomplete" if reason else "completed"
    output: list[dict[str, Any]] = []
    reasoning = reasoning_text(message)
    if reasoning:
        output.append(reasoning_item(new_id("rs"), reasoning, "completed"))
    text = content_text(message.get("content"), separator="")
    if text:
        output.append(message_item(new_id("msg"), text, item_status))
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        arguments = ArgumentStream()
        arguments.feed(function.get("arguments"))
        arguments.close()
        output.append(
            call_item(
                request,
                new_id("fc"),
                call.get("id") or new_id("call"),
                str(function.get("name") or ""),
                arguments.text,
                "completed",
            )
        )
    return response_object(
        request,
        new_id("resp"),
        int(completion.get("created") or time.time()),
        "incomplete" if reason else "completed",
        output,
        usage_of(completion.get("usage")),
        reason,
    )
