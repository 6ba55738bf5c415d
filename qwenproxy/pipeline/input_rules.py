"""The rules client-chosen input meets before anything goes upstream: names (models, session
ids, command values) are bounded and printable, JSON nests no deeper than the proxy can
encode again, and a body is read with a cap however it is framed. Every door, the session
store and the in-chat commands use these; the message of each refusal says which rule.
"""

from __future__ import annotations

from typing import Any, BinaryIO
from urllib.parse import quote

import orjson

from qwenproxy.errors import InvalidRequestError, PayloadTooLargeError

MAX_NAME_CHARS = 256
# orjson.dumps encodes 254 nested containers and refuses 255 ("Recursion limit reached",
# orjson 3.11-3.13; its loads takes 1024). The doors' translations put a client's JSON
# at most a few levels deeper than it came (e.g. `input_schema` -> `function.parameters`),
# so 128 leaves a wide margin and is far beyond any real tool schema.
MAX_JSON_DEPTH = 128
ORJSON_MAX_DEPTH = 254
_WRAP_TO_LIMIT = ORJSON_MAX_DEPTH - MAX_JSON_DEPTH
READ_CHUNK = 64 * 1024
# Header values keep printable ASCII as it is; anything else is percent-encoded (UTF-8).
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def name_problem(value: str, what: str) -> str | None:
    """Why `value` cannot be used as a name (None: it can). `what` starts the sentence."""
    if len(value) > MAX_NAME_CHARS:
        return f"{what} is {len(value)} characters long; at most {MAX_NAME_CHARS} are allowed."
    if not value.isprintable():
        return f"{what} contains a control character (or another unprintable one)."
    return None


def check_name(value: str, what: str, param: str | None = None) -> str:
    """`value` itself, or a 400 that says which rule it breaks."""
    problem = name_problem(value, what)
    if problem is not None:
        raise InvalidRequestError(problem, param=param, code="invalid_name")
    return value


def check_request_model(body: dict[str, Any]) -> None:
    """The client's `model` (any door): a name by the rules above when it is a string
    (its type is each door's schema's business)."""
    model = body.get("model")
    if isinstance(model, str):
        check_name(model, "`model`", "model")


def too_deep(raw: bytes | bytearray, body: Any) -> bool:
    """Whether `body` (decoded from `raw`) nests more than MAX_JSON_DEPTH containers. Few
    brackets in `raw` answer at once; otherwise orjson tries to encode it wrapped in the
    levels the limit leaves, which costs one encoding at C speed (~0.3 ms for 500 KB)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return False
    wrapped = body
    for _ in range(_WRAP_TO_LIMIT):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError:
        return True
    return False


def too_deep_error() -> InvalidRequestError:
    return InvalidRequestError(
        f"The request body nests JSON more than {MAX_JSON_DEPTH} levels deep; the proxy "
        "cannot forward it.",
        code="json_too_deep",
    )


def body_too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The request body is larger than {limit} bytes (MAX_BODY_BYTES)."
    )


def read_capped(stream: BinaryIO, content_length: int | None, limit: int) -> bytearray:
    """The whole body, never holding more than `limit` (+1) bytes: a declared length over
    the limit is refused before reading; an unframed (chunked) body is read until it ends
    or passes the limit. One growing buffer (no list of pieces joined at the end), so a
    body near the limit costs its size once, not twice."""
    if content_length is not None and content_length > limit:
        raise body_too_large(limit)
    want = content_length if content_length is not None else limit + 1
    body = bytearray()
    while len(body) < want:
        data = stream.read(min(READ_CHUNK, want - len(body)))
        if not data:
            break
        body += data
    if len(body) > limit:
        raise body_too_large(limit)
    return body


def header_text(value: str) -> str:
    """A validated name as a response header value: printable ASCII as it is, anything
    else percent-encoded, so no client text can end a header or break its encoding."""
    if value.isascii() and value.isprintable() and "%" not in value:
        return value
    return quote(value, safe=_HEADER_SAFE)
