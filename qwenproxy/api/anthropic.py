"""The Anthropic Messages API door for Claude Code and the `anthropic` SDK:
`POST /v1/messages` (streamed or not), `POST /v1/messages/count_tokens` (Qwen's token
count of the translated prompt) and `HEAD /api/hello`. Errors leave in Anthropic's shape."""

from __future__ import annotations

import logging

import orjson
from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from qwenproxy.api.context import require_client, services, translated_door
from qwenproxy.api.errors import proxy_error_for
from qwenproxy.errors import ContextLengthExceededError, ProxyError
from qwenproxy.schemas import parse_json_object
from qwenproxy.services.anthropic_format import (
    error_body,
    error_body_for,
    to_chat_request,
    to_message,
)
from qwenproxy.services.anthropic_stream import AnthropicStream
from qwenproxy.services.qwen_tokens import REPLY_PRIMER

log = logging.getLogger(__name__)

bp = Blueprint("anthropic", __name__)
bp.before_request(require_client)

# Claude Code checks that its base URL answers; no key needed, nothing revealed.
hello_bp = Blueprint("anthropic_hello", __name__)


@hello_bp.route("/api/hello", methods=["GET", "HEAD"])
def hello() -> Response:
    return Response(status=200)


@bp.post("/v1/messages")
def messages() -> Response:
    return translated_door(to_chat_request, AnthropicStream, to_message)


@bp.post("/v1/messages/count_tokens")
def count_tokens() -> dict[str, int]:
    """The prompt as the upstream will see it (translated like /v1/messages), counted
    with Qwen's vocabulary and chat template, without the answer's primer."""
    translated = to_chat_request(
        parse_json_object(request.get_data()), services().config.anthropic_model_map
    )
    chat = translated.chat
    counter = services().tokens
    total = counter.count_chat_off_hub(chat.get("messages") or [], chat.get("tools"))
    return {"input_tokens": max(1, total - REPLY_PRIMER)}


def error_response(error: ProxyError) -> Response:
    body = (
        error_body("invalid_request_error", error.anthropic_message())
        if isinstance(error, ContextLengthExceededError)
        else error_body_for(error)
    )
    response = Response(orjson.dumps(body), status=error.status, mimetype="application/json")
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


@bp.errorhandler(ProxyError)
def _proxy_error(exc: ProxyError) -> Response:
    return error_response(exc)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return error_response(proxy_error_for(exc))


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return error_response(ProxyError("The proxy hit an internal error; see its log."))
