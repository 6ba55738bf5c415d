"""Request validation with marshmallow. Unknown fields pass through untouched.

Only the fields the proxy relies on are checked, and strictly (no "true" for true, no
"1" for 1): what an upstream would reject is rejected here with a `param` that names it.
"""

from __future__ import annotations

from typing import Any

import orjson
from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from qwenproxy.errors import InvalidRequestError
from qwenproxy.services.input_rules import too_deep, too_deep_error

MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class StrictBoolean(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ValidationError("must be true or false")
        return value


class StrictNumber(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValidationError("must be a number")
        return value


class StrictInteger(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("must be an integer")
        return value


class StrictString(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError("must be a string")
        return value


class Message(fields.Field):
    """One chat message: a role, and content that is a string, a list of parts or null."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise ValidationError("must be an object with `role` and `content`")
        role = value.get("role")
        if not isinstance(role, str) or role not in MESSAGE_ROLES:
            raise ValidationError(f"`role` must be one of {', '.join(MESSAGE_ROLES)}")
        content = value.get("content")
        if content is None:
            if role != "assistant":  # an assistant turn may be empty (e.g. only tool_calls)
                raise ValidationError("`content` must be a string or a list of parts")
        elif isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise ValidationError("each content part must be an object with a `type`")
        elif not isinstance(content, str):
            raise ValidationError("`content` must be a string or a list of parts")
        return value


class ChatCompletionRequestSchema(Schema):
    class Meta:
        unknown = INCLUDE

    model = StrictString(allow_none=True)
    messages = fields.List(Message(), required=True, validate=validate.Length(min=1))
    stream = StrictBoolean(allow_none=True)
    stream_options = fields.Dict(allow_none=True)
    temperature = StrictNumber(allow_none=True)
    top_p = StrictNumber(allow_none=True)
    max_tokens = StrictInteger(allow_none=True)
    max_completion_tokens = StrictInteger(allow_none=True)
    n = StrictInteger(allow_none=True)
    tools = fields.List(fields.Dict(), allow_none=True)


CHAT_COMPLETION_REQUEST = ChatCompletionRequestSchema()


def _first_error(messages: Any, path: str = "") -> tuple[str, str]:
    """(param path, message) of the first error in marshmallow's nested error dict."""
    if isinstance(messages, dict):
        key, value = next(iter(messages.items()))
        if isinstance(key, int):
            sub = f"{path}[{key}]"
        else:
            sub = f"{path}.{key}" if path else str(key)
        return _first_error(value, sub)
    if isinstance(messages, list) and messages:
        return path, str(messages[0])
    return path, str(messages)


def parse_json_object(raw: bytes | bytearray) -> dict[str, Any]:
    """Decode a request body that must be one JSON object, nested no deeper than the
    proxy can encode again (`input_rules.MAX_JSON_DEPTH`)."""
    if not raw:
        raise InvalidRequestError("The request body is empty; send a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # orjson.loads stops at 1024
            raise too_deep_error() from None
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    if too_deep(raw, body):
        raise too_deep_error()
    return body


def load_chat_completion_request(raw: bytes | bytearray) -> dict[str, Any]:
    body = parse_json_object(raw)
    try:
        return CHAT_COMPLETION_REQUEST.load(body)
    except ValidationError as exc:
        param, message = _first_error(exc.messages)
        if message == "Missing data for required field.":
            message = "is required"
        elif message.startswith("Shorter than minimum length"):
            message = "must not be empty"
        raise InvalidRequestError(f"`{param}` {message}", param=param) from None
