"""Every error leaves as OpenAI-shaped JSON with a fitting status — never a traceback."""

from __future__ import annotations

import logging

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from qwenproxy.errors import (
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    ProxyError,
)

log = logging.getLogger(__name__)


def error_response(error: ProxyError) -> Response:
    response = Response(
        orjson.dumps(error.to_body()), status=error.status, mimetype="application/json"
    )
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def proxy_error_for(exc: HTTPException) -> ProxyError:
    status = exc.code or 500
    if status == 404:
        return NotFoundError(f"Unknown route: {request.method} {request.path}")
    if status == 405:
        return MethodNotAllowedError(f"{request.method} is not allowed on {request.path}")
    if status == 413:
        limit = request.max_content_length
        return PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
    if 400 <= status < 500:
        return InvalidRequestError(exc.description or exc.name, status=status)
    return ProxyError(exc.description or exc.name, status=status)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ProxyError)
    def _proxy_error(exc: ProxyError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return error_response(proxy_error_for(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(ProxyError("The proxy hit an internal error; see its log."))
