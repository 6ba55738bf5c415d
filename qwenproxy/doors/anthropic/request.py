"""The Anthropic Messages API at the edge, the request side: a `POST /v1/messages` body as
a chat-completions body for the pipeline (`to_chat_request`), with what the answer must
repeat (`AnthropicRequest`). Its answer and errors: answer.py; its stream:
stream.py."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from qwenproxy.doors.vendor_models import map_vendor_model
from qwenproxy.errors import InvalidRequestError
from qwenproxy.pipeline.messages.content import content_text
from qwenproxy.pipeline.messages.prompt_cache import (
    count_markers,
    keep_last_markers,
    marker_of,
)

log = logging.getLogger(__name__)

# --- the request ----------------------------------------------------------------------


@dataclass
class AnthropicRequest:
    """A /v1/messages request as the pipeline takes it, and what the answer repeats."""

    chat: dict[str, Any]
    model: str
    stop_sequences: tuple[str, ...] = ()
    thinking: bool = False  # the client asked to see the model's reasoning
    # `chat` carries the client's cache_control markers (taken off again for backends
    # whose CACHE_MARKERS switch is off)
    cache_markers: bool = False


def to_chat_request(body: dict[str, Any], model_map: Mapping[str, str]) -> AnthropicRequest:
    """Translate a Messages API body. `thinking` (enabled, or adaptive unless its display
    is "omitted") asks for the upstream's reasoning as thinking blocks; the setting itself
    is not sent upstream. `cache_control` markers (on system, message and tool_result
    blocks and tool definitions) become markers on the matching content parts and tools,
    the last 4 kept (pipeline/messages/prompt_cache.py). Dropped (no upstream can use them):
    `metadata`, `output_config`, `context_management`, `container`, `mcp_servers`,
    `service_tier`, thinking blocks in the history and Anthropic's server tools. The body
    has passed schemas.load_anthropic_messages_request (its shape is not checked again)."""
    model = body.get("model")
    system = _system_parts(body.get("system"))
    messages: list[dict[str, Any]] = []
    for message in body["messages"]:
        role, content = message["role"], message.get("content")
        if role == "user":
            messages.extend(_user_messages(content))
        elif role == "assistant":
            messages.append(_assistant_message(content))
        else:  # some clients put a system turn inside `messages`
            text = content_text(content)
            if text:
                system.append({"type": "text", "text": text})
    if system:
        marked = any("cache_control" in part for part in system)
        joined = "\n\n".join(part["text"] for part in system)
        messages.insert(0, {"role": "system", "content": system if marked else joined})
    chat: dict[str, Any] = {"messages": messages}
    target = map_vendor_model(model, model_map)
    if target:
        chat["model"] = target
    for name in ("max_tokens", "temperature", "top_p", "top_k"):  # numbers (the schema)
        if body.get(name) is not None:
            chat[name] = body[name]
    stop = body.get("stop_sequences")
    if stop:
        chat["stop"] = stop
    tools = _tools(body.get("tools"))
    if tools:
        chat["tools"] = tools
        _tool_choice(body.get("tool_choice"), chat)
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # for message_delta's usage
    dropped = keep_last_markers(chat)
    if dropped:
        log.debug("left out the %d earliest of more than 4 cache_control markers", dropped)
    return AnthropicRequest(
        chat,
        model or "",
        tuple(stop or ()),
        _wants_thinking(body),
        cache_markers=count_markers(chat) > 0,
    )


def _wants_thinking(body: dict[str, Any]) -> bool:
    thinking = body.get("thinking")
    if not isinstance(thinking, dict):
        return False
    kind = thinking.get("type")
    return kind == "enabled" or (kind == "adaptive" and thinking.get("display") != "omitted")


def _system_parts(system: Any) -> list[dict[str, Any]]:
    """The system prompt as text parts, one per block, each with its block's marker."""
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"type": "text", "text": system}]
    if isinstance(system, list):  # of objects (schemas.AnthropicSystem)
        parts = [
            _with_marker({"type": "text", "text": b["text"]}, b)
            for b in system
            if isinstance(b.get("text"), str)
        ]
        if any(part["text"] or "cache_control" in part for part in parts):
            return parts
    return []


def _with_marker(part: dict[str, Any], block: Any) -> dict[str, Any]:
    """`part` with the cache marker of the client's `block`, if it had one."""
    marker = marker_of(block)
    if marker is not None:
        part["cache_control"] = marker
    return part


def _omitted(kind: str) -> dict[str, Any]:
    return {"type": "text", "text": f"[{kind} omitted: the proxy cannot forward it]"}


def _image_part(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media_type = source.get("media_type") or "image/png"
        return {
            "type": "image_url",
            "image_url": {"url": f"data:{media_type};base64,{source['data']}"},
        }
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    return _omitted("image (file reference)")


def _document_part(block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    title = block.get("title")
    prefix = f"{title}\n\n" if isinstance(title, str) and title else ""
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": prefix + source["data"]}
    if source.get("type") == "content" and isinstance(source.get("content"), list):
        return {"type": "text", "text": prefix + content_text(source["content"])}
    return _omitted(f"document ({source.get('media_type') or source.get('type') or 'file'})")


def _compact(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One text part as a plain string (what every upstream takes); else the parts. A
    part with a cache marker stays a part: the marker needs one to sit on."""
    if len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]:
        return parts[0]["text"]
    return parts


def _user_messages(content: Any) -> list[dict[str, Any]]:
    """A user turn: its tool results first (as `role: tool` messages, which must follow
    the assistant's tool calls), then one user message with the rest."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    tool_messages: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        kind = block["type"]
        if kind == "text":
            text_part = {"type": "text", "text": str(block.get("text") or "")}
            parts.append(_with_marker(text_part, block))
        elif kind == "image":
            parts.append(_with_marker(_image_part(block), block))
        elif kind == "document":
            parts.append(_with_marker(_document_part(block), block))
        elif kind == "tool_result":
            tool_messages.append(_tool_message(block, parts))
        elif kind in ("thinking", "redacted_thinking"):
            continue
        else:
            parts.append(_with_marker(_omitted(f"{kind} block"), block))
    if parts:
        tool_messages.append({"role": "user", "content": _compact(parts)})
    return tool_messages


def _tool_message(block: dict[str, Any], user_parts: list[dict[str, Any]]) -> dict[str, Any]:
    """A tool_result as a tool message; its images go to the user message that follows
    (tool messages carry text only on most upstreams). A marker on the block, or on any
    of its content blocks, makes the content one marked text part."""
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequestError("a `tool_result` block needs a `tool_use_id`", param="messages")
    content = block.get("content")
    texts: list[str] = []
    marker = marker_of(block)
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for item in content:
            marker = marker or marker_of(item)
            if not isinstance(item, dict):
                continue
            if item.get("type") == "text":
                texts.append(str(item.get("text") or ""))
            elif item.get("type") == "image":
                user_parts.append({"type": "text", "text": f"(image from tool call {call_id})"})
                user_parts.append(_image_part(item))
            elif item.get("type") == "document":
                texts.append(_document_part(item)["text"])
    text = "\n".join(texts)
    if block.get("is_error"):
        text = f"[tool error] {text}"
    if marker is not None:
        marked = [{"type": "text", "text": text, "cache_control": marker}]
        return {"role": "tool", "tool_call_id": call_id, "content": marked}
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _assistant_message(content: Any) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    marker = None
    for block in content:
        kind = block["type"]
        if kind in ("text", "tool_use"):
            marker = marker or marker_of(block)
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            arguments = block.get("input")
            calls.append(
                {
                    "id": str(block.get("id") or new_tool_use_id()),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name") or ""),
                        "arguments": orjson.dumps(
                            arguments if arguments is not None else {}
                        ).decode(),
                    },
                }
            )
        # thinking blocks and server tool blocks have no chat-completions form
    message: dict[str, Any] = {"role": "assistant", "content": "\n".join(texts)}
    if marker is not None and message["content"]:
        # A marker needs a text part to sit on: an answer that is only tool calls has none,
        # so its marker is left out.
        text = message["content"]
        message["content"] = [{"type": "text", "text": text, "cache_control": marker}]
    if calls:
        message["tool_calls"] = calls
        if not message["content"]:
            message["content"] = None
    return message


def _tools(tools: Any) -> list[dict[str, Any]]:
    """Client tools as functions (`input_schema` → `parameters`; `defer_loading` is
    ignored: the tool is offered). Anthropic's server tools (`web_search_…`, `bash_…`,
    `tool_search_…`) run on Anthropic's side only and are left out."""
    result = []
    for tool in tools or ():  # objects; the offered ones named (schemas.ToolList)
        if tool.get("type") not in (None, "custom"):
            log.debug("leaving out the server tool %s", tool.get("type"))
            continue
        function: dict[str, Any] = {"name": tool["name"]}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        schema = tool.get("input_schema")
        function["parameters"] = (
            schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
        )
        result.append(_with_marker({"type": "function", "function": function}, tool))
    return result


def _tool_choice(choice: Any, chat: dict[str, Any]) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict):
        raise InvalidRequestError("`tool_choice` must be an object", param="tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        chat["tool_choice"] = "auto"
    elif kind == "any":
        chat["tool_choice"] = "required"
    elif kind == "none":
        chat["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise InvalidRequestError(
            "`tool_choice.type` must be auto, any, tool (with a `name`) or none",
            param="tool_choice",
        )
    if choice.get("disable_parallel_tool_use") is True:
        chat["parallel_tool_calls"] = False


def new_tool_use_id() -> str:
    return "toolu_" + secrets.token_hex(12)
