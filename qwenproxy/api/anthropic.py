"""The Anthropic Messages API door for Claude Code and the `anthropic` SDK:
`POST /v1/messages` (streamed or not), `POST /v1/messages/count_tokens` (an estimate) and
`HEAD /api/hello`. Errors leave in Anthropic's shape."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response

from qwenproxy.api.context import request_json, require_client, translated_door
from qwenproxy.api.errors import refusal_for
from qwenproxy.errors import ProxyError
from qwenproxy.services.anthropic_format import (
    error_body_for,
    estimate_input_tokens,
    to_chat_request,
    to_message,
)
from qwenproxy.services.anthropic_stream import AnthropicStream

bp = Blueprint("anthropic", __name__)
bp.before_request(require_client)

# Claude Code checks that its base URL answers; no key needed, nothing revealed.
hello_bp = Blueprint("anthropic_hello", __name__)


@hello_bp.route("/api/hello", methods=["GET", "HEAD"])
def hello() -> Response:
    return Response(status=200)


@bp.post("/v1/messages")
def messages() -> Response:
    return translated_door(to_chat_request, AnthropicStream, to_message, error_body_for)


@bp.post("/v1/messages/count_tokens")
def count_tokens() -> dict[str, int]:
    return {"input_tokens": estimate_input_tokens(request_json())}


def error_response(error: ProxyError) -> Response:
    response = Response(
        orjson.dumps(error_body_for(error)), status=error.status, mimetype="application/json"
    )
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


@bp.errorhandler(Exception)
def _error(exc: Exception) -> Response:
    return error_response(refusal_for(exc))
