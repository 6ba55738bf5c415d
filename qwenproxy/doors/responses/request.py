"""The OpenAI Responses API at the edge, stateless: a `POST /v1/responses` body as a
chat-completions body for the pipeline (the answer's side: answer.py; streams:
stream.py)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from qwenproxy.doors.vendor_models import map_vendor_model
from qwenproxy.errors import InvalidRequestError
from qwenproxy.pipeline.messages.content import SYSTEM_ROLES, content_text

log = logging.getLogger(__name__)

MAX_TOOL_NAME = 64  # OpenAI's limit on function names, which upstreams enforce too
RENAMED = (  # Responses field -> chat-completions field
    ("max_output_tokens", "max_tokens"),
    ("temperature", "temperature"),
    ("top_p", "top_p"),
    ("parallel_tool_calls", "parallel_tool_calls"),
)


def flat_tool_name(namespace: str, name: str) -> str:
    """The one function name a namespaced tool has upstream: `mcp__github__` + `create`
    → `mcp__github__create`, `crm` + `find` → `crm__find` (hashed down to 64 chars)."""
    joined = f"{namespace}{name}" if namespace.endswith("_") else f"{namespace}__{name}"
    if len(joined) <= MAX_TOOL_NAME:
        return joined
    digest = hashlib.sha256(joined.encode()).hexdigest()[:8]
    return f"{joined[: MAX_TOOL_NAME - 9]}_{digest}"


@dataclass
class ResponsesRequest:
    """A /v1/responses request as the pipeline takes it, and what the answer repeats."""

    chat: dict[str, Any]
    model: str
    echo: dict[str, Any] = field(default_factory=dict)  # fields the response object repeats
    # upstream function name -> (namespace or None, name, "function" or "custom")
    tool_names: dict[str, tuple[str | None, str, str]] = field(default_factory=dict)

    def tool_of(self, upstream_name: str) -> tuple[str | None, str, str]:
        return self.tool_names.get(upstream_name, (None, upstream_name, "function"))


def to_chat_request(body: dict[str, Any], model_map: Mapping[str, str]) -> ResponsesRequest:
    """Translate a Responses body. Dropped: tools other than function, namespace and custom
    (`web_search`, `file_search`, `mcp`, ...), `reasoning`, `include`, `store`,
    `prompt_cache_key`, `client_metadata`, `metadata` (repeated in the answer only),
    `truncation`, `service_tier`, `text.verbosity`, reasoning input items. The body has
    passed schemas.load_responses_request (its shape is not checked again)."""
    model = body.get("model")
    tools, tool_names = _tools(body.get("tools"))
    request = ResponsesRequest({}, model or "", tool_names=tool_names)
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages.extend(_input_messages(body.get("input"), request))
    if not messages:
        raise InvalidRequestError("`input` must not be empty", param="input")
    chat: dict[str, Any] = {"messages": messages}
    target = map_vendor_model(model, model_map)
    if target:
        chat["model"] = target
    if tools:
        chat["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            chat["tool_choice"] = choice
    for name, target in RENAMED:  # numbers and booleans (the schema)
        if body.get(name) is not None:
            chat[target] = body[name]
    if isinstance(body.get("user"), str):
        chat["user"] = body["user"]
    response_format = _response_format(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    if body.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}  # for response.completed's usage
    request.chat = chat
    request.echo = {
        "instructions": instructions or None,
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") if isinstance(body.get("tools"), list) else [],
        "text": body.get("text") if isinstance(body.get("text"), dict) else None,
        "reasoning": body.get("reasoning") if isinstance(body.get("reasoning"), dict) else None,
        "user": body.get("user"),
    }
    return request


# --- input items ----------------------------------------------------------------------


def _input_messages(value: Any, request: ResponsesRequest) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    builder = _MessageBuilder(request)
    for i, item in enumerate(value or ()):  # objects (schemas.ResponsesInput)
        builder.add(item, f"input[{i}]")
    return builder.finish()


class _MessageBuilder:
    """Input items in order as chat messages: calls join the assistant message before them;
    tool outputs stay together right after it (images they return follow as a user
    message once they are done)."""

    def __init__(self, request: ResponsesRequest) -> None:
        self.request = request
        self.messages: list[dict[str, Any]] = []
        self.tool_images: list[dict[str, Any]] = []

    def add(self, item: dict[str, Any], param: str) -> None:
        kind = item.get("type")
        if kind in (None, "message"):
            self._flush_images()
            self._message(item, param)
        elif kind in ("function_call", "custom_tool_call"):
            self._flush_images()
            self._call(item, param)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            self._output(item, param)
        elif kind == "item_reference":
            raise InvalidRequestError(
                "`item_reference` items are not supported: this proxy stores no items.",
                param=param,
            )
        else:  # reasoning, web_search_call, ... have no chat-completions form
            log.debug("leaving out an input item of type %s", kind)

    def finish(self) -> list[dict[str, Any]]:
        self._flush_images()
        return self.messages

    def _message(self, item: dict[str, Any], param: str) -> None:
        role = item["role"]  # one of schemas.INPUT_ROLES
        parts = _content_parts(item.get("content"), f"{param}.content")
        if role in SYSTEM_ROLES or role == "assistant":
            text = content_text(parts, separator="")
            self.messages.append(
                {"role": "system" if role != "assistant" else role, "content": text}
            )
        else:
            self.messages.append({"role": "user", "content": _compact(parts)})

    def _call(self, item: dict[str, Any], param: str) -> None:
        call_id = item.get("call_id")
        name = item.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise InvalidRequestError(f"`{param}` needs a `call_id` and a `name`", param=param)
        namespace = item.get("namespace")
        if isinstance(namespace, str) and namespace:
            name = flat_tool_name(namespace, name)
        if item.get("type") == "custom_tool_call":
            arguments = orjson.dumps({"input": str(item.get("input") or "")}).decode()
        else:
            raw = item.get("arguments")
            arguments = raw if isinstance(raw, str) else orjson.dumps(raw or {}).decode()
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
            if not last.get("content"):
                last["content"] = None
        else:
            self.messages.append({"role": "assistant", "content": None, "tool_calls": [call]})

    def _output(self, item: dict[str, Any], param: str) -> None:
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            raise InvalidRequestError(f"`{param}.call_id` must be a string", param=param)
        output = item.get("output")
        if isinstance(output, str):
            text = output
        elif isinstance(output, list):
            texts = []
            for part in _content_parts(output, f"{param}.output"):
                if part["type"] == "text":
                    texts.append(part["text"])
                else:
                    self.tool_images.append(
                        {"type": "text", "text": f"(image from tool call {call_id})"}
                    )
                    self.tool_images.append(part)
            text = "\n".join(texts)
        elif output is None:
            text = ""
        else:
            text = orjson.dumps(output).decode()
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": text})

    def _flush_images(self) -> None:
        if self.tool_images:
            self.messages.append({"role": "user", "content": self.tool_images})
            self.tool_images = []


def _content_parts(content: Any, param: str) -> list[dict[str, Any]]:
    """Responses content (a string or parts) as chat-completions parts."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequestError(f"`{param}` must be a string or a list of parts", param=param)
    parts: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            raise InvalidRequestError(f"`{param}` parts must be objects", param=param)
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image: dict[str, Any] = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            what = "image (file_id)" if kind == "input_image" else f"{kind} part"
            parts.append({"type": "text", "text": f"[{what} omitted: the proxy cannot forward it]"})
    return parts


def _compact(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


# --- tools ----------------------------------------------------------------------------


def _tools(tools: Any) -> tuple[list[dict[str, Any]], dict[str, tuple[str | None, str, str]]]:
    """Function tools as they are; the function and custom tools inside a namespace under
    one flat name each; custom (free-form) tools as a function with one string `input`.
    Hosted tools (`web_search`, `file_search`, `mcp`, ...) run on OpenAI's side only."""
    result: list[dict[str, Any]] = []
    names: dict[str, tuple[str | None, str, str]] = {}
    for tool in tools or ():  # objects; the offered ones named (schemas.ToolList)
        kind = tool.get("type")
        if kind in ("function", "custom"):
            result.append(_function_tool(tool, None, names))
        elif kind == "namespace":
            inner_tools = tool.get("tools")
            for inner in inner_tools if isinstance(inner_tools, list) else ():
                if isinstance(inner, dict) and inner.get("type") in ("function", "custom"):
                    result.append(_function_tool(inner, tool, names))
        else:
            log.debug("leaving out the hosted tool %s", kind)
    return result, names


def _function_tool(
    tool: dict[str, Any],
    namespace: dict[str, Any] | None,
    names: dict[str, tuple[str | None, str, str]],
) -> dict[str, Any]:
    name = tool["name"]
    kind = tool["type"]
    description = tool.get("description") if isinstance(tool.get("description"), str) else ""
    upstream_name = name
    if namespace is not None:
        upstream_name = flat_tool_name(namespace["name"], name)
        about = namespace.get("description")
        if isinstance(about, str) and about:
            description = f"{description}\n\n({namespace['name']}: {about})".strip()
    function: dict[str, Any] = {"name": upstream_name}
    if kind == "custom":
        grammar = tool.get("format") if isinstance(tool.get("format"), dict) else {}
        if grammar.get("type") == "grammar" and isinstance(grammar.get("definition"), str):
            description += (
                f"\n\nThe `input` must follow this {grammar.get('syntax', '')} grammar:\n"
                + grammar["definition"]
            )
        function["parameters"] = {
            "type": "object",
            "properties": {"input": {"type": "string", "description": "The raw input."}},
            "required": ["input"],
        }
    else:
        parameters = tool.get("parameters")
        function["parameters"] = (
            parameters if isinstance(parameters, dict) else {"type": "object", "properties": {}}
        )
        if tool.get("strict") is True:
            function["strict"] = True
    if description:
        function["description"] = description.strip()
    if namespace is not None or kind == "custom":
        names[upstream_name] = (namespace["name"] if namespace else None, name, kind)
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict):
        if choice.get("type") in ("function", "custom") and isinstance(choice.get("name"), str):
            name = choice["name"]
            if isinstance(choice.get("namespace"), str) and choice["namespace"]:
                name = flat_tool_name(choice["namespace"], name)
            return {"type": "function", "function": {"name": name}}
        if choice.get("type") == "allowed_tools":
            return "required" if choice.get("mode") == "required" else "auto"
        return "auto"  # a hosted tool, which is not offered upstream
    raise InvalidRequestError(
        "`tool_choice` must be auto, none, required or a tool", param="tool_choice"
    )


def _response_format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, dict) or not isinstance(text.get("format"), dict):
        return None
    spec = text["format"]
    if spec.get("type") == "json_object":
        return {"type": "json_object"}
    if spec.get("type") == "json_schema":
        schema = {
            key: spec[key] for key in ("name", "schema", "strict", "description") if key in spec
        }
        return {"type": "json_schema", "json_schema": schema}
    return None
