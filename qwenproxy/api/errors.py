"""Every error leaves as OpenAI-shaped JSON with a fitting status — never a traceback —
and a request refused before (or outside) the pipeline still gets its ledger row."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from qwenproxy.errors import (
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    ProxyError,
)
from qwenproxy.pipeline.context import RequestContext

log = logging.getLogger(__name__)


ErrorBody = Callable[[ProxyError], dict[str, Any]]


def error_response(error: ProxyError, body_of: ErrorBody | None = None) -> Response:
    """`error` as JSON with its status and headers; `body_of` shapes it (OpenAI's shape,
    `error.to_body()`, unless a door speaks another API)."""
    body = error.to_body() if body_of is None else body_of(error)
    response = Response(orjson.dumps(body), status=error.status, mimetype="application/json")
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def record_refusal(error: ProxyError) -> None:
    """One ledger row (and metrics) for a request that ends with `error` here: refused at
    the edge (client check, body, names, unknown route) or failed outside the pipeline's
    own accounting. Requests the pipeline has recorded are left alone, and so are the
    browser's GETs outside the API (a dashboard's favicon is not a request to count)."""
    ctx: RequestContext | None = g.get("pipeline_ctx")
    if ctx is not None and ctx.finished_at is not None:
        return
    if ctx is None:
        if request.method in ("GET", "HEAD") and not request.path.startswith("/v1/"):
            return
        ctx = RequestContext(g.get("client_id") or "", "")
    services = current_app.extensions.get("qwenproxy")
    accounting = getattr(services, "accounting", None)
    if accounting is None:
        return
    ctx.fail(error)
    ctx.outcome.finish()
    try:
        accounting.finished(ctx)
    except Exception:  # accounting must never break a request
        log.exception("recording a refused request failed")


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


def refusal_for(exc: Exception) -> ProxyError:
    """The error a client sees for `exc`, recorded in the ledger on the way."""
    if isinstance(exc, ProxyError):
        error = exc
    elif isinstance(exc, HTTPException):
        error = proxy_error_for(exc)
    else:
        log.exception("unexpected error on %s %s", request.method, request.path)
        error = ProxyError("The proxy hit an internal error; see its log.")
    record_refusal(error)
    return error


def register_error_handlers(app: Flask, bodies: Mapping[str, ErrorBody] | None = None) -> None:
    """The one error handler, for the whole app: every error is recorded (refusal_for)
    and leaves shaped by `bodies[blueprint]` for a blueprint listed there (a door that
    speaks another API), else in OpenAI's shape."""
    shapes = dict(bodies or {})

    @app.errorhandler(Exception)
    def _error(exc: Exception) -> Response:
        return error_response(refusal_for(exc), shapes.get(request.blueprint or ""))
