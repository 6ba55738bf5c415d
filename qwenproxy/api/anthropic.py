"""The Anthropic Messages API door for Claude Code and the `anthropic` SDK:
`POST /v1/messages` (streamed or not), `POST /v1/messages/count_tokens` (an estimate) and
`HEAD /api/hello`. Errors leave in Anthropic's shape."""

from __future__ import annotations

import logging

import orjson
from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from qwenproxy.api.context import require_client, translated_door
from qwenproxy.api.errors import proxy_error_for
from qwenproxy.errors import ProxyError
from qwenproxy.schemas import parse_json_object
from qwenproxy.services.anthropic_format import (
    error_body_for,
    estimate_input_tokens,
    to_chat_request,
    to_message,
)
from qwenproxy.services.anthropic_stream import AnthropicStream

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
    return translated_door(to_chat_request, AnthropicStream, to_message, error_body_for)


@bp.post("/v1/messages/count_tokens")
def count_tokens() -> dict[str, int]:
    return {"input_tokens": estimate_input_tokens(parse_json_object(request.get_data()))}


def error_response(error: ProxyError) -> Response:
    response = Response(
        orjson.dumps(error_body_for(error)), status=error.status, mimetype="application/json"
    )
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
