"""Request validation with marshmallow, one schema per door: chat completions, the
Anthropic Messages API and the Responses API. Unknown fields pass through untouched.

Only the fields the proxy relies on are checked, and strictly (no "true" for true, no
"1" for 1): what an upstream would reject is rejected here with a `param` that names it,
as an InvalidRequestError (the Anthropic door's error handler gives it Anthropic's shape).
What only the translation can tell (a `tool_result` without its id, stored items) is
checked there.
"""

from __future__ import annotations

from typing import Any

import orjson
from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from qwenproxy.errors import InvalidRequestError
from qwenproxy.pipeline.input_rules import too_deep, too_deep_error
from qwenproxy.pipeline.messages.content import SYSTEM_ROLES

MESSAGE_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


class _Strict(fields.Field):
    """A value of exactly the JSON type `kinds` (true is not a number here), as is."""

    kinds: tuple[type, ...] = ()
    what = ""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        is_bool = isinstance(value, bool)
        if not isinstance(value, self.kinds) or (is_bool and bool not in self.kinds):
            raise ValidationError(f"must be {self.what}")
        return value


class StrictBoolean(_Strict):
    kinds, what = (bool,), "true or false"


class StrictNumber(_Strict):
    kinds, what = (int, float), "a number"


class StrictInteger(_Strict):
    kinds, what = (int,), "an integer"


class StrictString(_Strict):
    kinds, what = (str,), "a string"


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


def _invalid(path: str | int, message: str) -> ValidationError:
    """An error on the sub-field `path` (a key, or a list index) of the field at hand."""
    return ValidationError({path: [message]})


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


def _validated(schema: Schema, body: dict[str, Any]) -> dict[str, Any]:
    try:
        return schema.load(body)
    except ValidationError as exc:
        param, message = _first_error(exc.messages)
        if message == "Missing data for required field.":
            message = "is required"
        elif message.startswith("Shorter than minimum length"):
            message = "must not be empty"
        raise InvalidRequestError(f"`{param}` {message}", param=param) from None


def load_chat_completion_request(raw: bytes | bytearray) -> dict[str, Any]:
    return _validated(CHAT_COMPLETION_REQUEST, parse_json_object(raw))


# --- the Anthropic Messages API (POST /v1/messages, /v1/messages/count_tokens) ---------


class AnthropicMessages(fields.Field):
    """`messages`: a non-empty list of objects with a string `role`, and content that is
    a string or a list of blocks with a `type`."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValidationError("must be a non-empty list")
        for i, message in enumerate(value):
            if not isinstance(message, dict):
                raise _invalid(i, "must be an object")
            if not isinstance(message.get("role"), str):
                raise ValidationError({i: {"role": ["must be a string"]}})
            content = message.get("content")
            if not isinstance(content, str) and not (
                isinstance(content, list)
                and all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in content)
            ):
                message_text = "must be a string or a list of blocks with a `type`"
                raise ValidationError({i: {"content": [message_text]}})
        return value


class AnthropicSystem(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(b, dict) for b in value)
        ):
            return value
        raise ValidationError("must be a string or a list of text blocks")


class StringList(fields.Field):
    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise ValidationError("must be a list of strings")
        return value


def _has_name(tool: Any) -> bool:
    return isinstance(tool.get("name"), str) and bool(tool["name"])


class ToolList(fields.Field):
    """`tools`: a list of objects; those of the types in `offered` (the ones the proxy
    offers upstream) need a non-empty string `name`. With `namespaces` (the Responses
    API), a `namespace` tool needs one too, and so do the offered tools inside it."""

    def __init__(
        self, offered: tuple[str | None, ...], namespaces: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.offered = offered
        self.namespaces = namespaces

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, list):
            raise ValidationError("must be a list")
        for i, tool in enumerate(value):
            if not isinstance(tool, dict):
                raise _invalid(i, "must be an object")
            kind = tool.get("type")
            namespace = self.namespaces and kind == "namespace"
            if (kind in self.offered or namespace) and not _has_name(tool):
                raise ValidationError({i: {"name": ["must be a string"]}})
            inner = tool.get("tools") if namespace else None
            for j, each in enumerate(inner if isinstance(inner, list) else ()):
                if isinstance(each, dict) and each.get("type") in self.offered:
                    if not _has_name(each):
                        raise ValidationError({i: {"tools": {j: {"name": ["must be a string"]}}}})
        return value


class AnthropicMessagesRequestSchema(Schema):
    class Meta:
        unknown = INCLUDE

    model = StrictString(allow_none=True)
    messages = AnthropicMessages(
        required=True,
        allow_none=False,
        error_messages={"required": "must be a non-empty list", "null": "must be a non-empty list"},
    )
    system = AnthropicSystem(allow_none=True)
    max_tokens = StrictInteger(allow_none=True)
    temperature = StrictNumber(allow_none=True)
    top_p = StrictNumber(allow_none=True)
    top_k = StrictInteger(allow_none=True)
    stop_sequences = StringList(allow_none=True)
    tools = ToolList((None, "custom"), allow_none=True)
    stream = StrictBoolean(allow_none=True)


ANTHROPIC_MESSAGES_REQUEST = AnthropicMessagesRequestSchema()


def load_anthropic_messages_request(raw: bytes | bytearray) -> dict[str, Any]:
    return _validated(ANTHROPIC_MESSAGES_REQUEST, parse_json_object(raw))


# --- the Responses API (POST /v1/responses) -------------------------------------------

INPUT_ROLES = ("user", "assistant", *SYSTEM_ROLES)


class Unsupported(fields.Field):
    """A field the proxy cannot honour: refused when it asks for anything (truthy). The
    stateful ones (`previous_response_id`, `conversation`, `prompt`) need stored state,
    which a stateless proxy does not have."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(allow_none=True, **kwargs)
        self.message = message

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if value:
            raise ValidationError(self.message)
        return value


STATELESS = (
    "is not supported: this proxy stores no responses or conversations. Send the whole "
    "conversation in `input` (as with `store: false`)."
)


class ResponsesInput(fields.Field):
    """`input`: a string, or a list of item objects; a message item has a known role."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValidationError("must be a string or a list of items")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise _invalid(i, "must be an object")
            if item.get("type") in (None, "message") and item.get("role") not in INPUT_ROLES:
                raise ValidationError(
                    {i: {"role": ["must be user, assistant, system or developer"]}}
                )
        return value


class ResponsesRequestSchema(Schema):
    class Meta:
        unknown = INCLUDE

    previous_response_id = Unsupported(STATELESS)
    conversation = Unsupported(STATELESS)
    prompt = Unsupported(STATELESS)
    background = Unsupported("is not supported: this proxy stores no responses.")
    model = StrictString(allow_none=True)
    tools = ToolList(("function", "custom"), namespaces=True, allow_none=True)
    instructions = StrictString(allow_none=True)
    input = ResponsesInput(allow_none=True)
    max_output_tokens = StrictInteger(allow_none=True)
    temperature = StrictNumber(allow_none=True)
    top_p = StrictNumber(allow_none=True)
    parallel_tool_calls = StrictBoolean(allow_none=True)
    stream = StrictBoolean(allow_none=True)


RESPONSES_REQUEST = ResponsesRequestSchema()


def load_responses_request(raw: bytes | bytearray) -> dict[str, Any]:
    return _validated(RESPONSES_REQUEST, parse_json_object(raw))
