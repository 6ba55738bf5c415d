"""gunicorn's gevent worker, with one change: a request gunicorn refuses itself before the
app sees it (headers or request line over its limits, a malformed request line or chunk)
is answered with an OpenAI-shaped JSON error instead of gunicorn's HTML page, and gets a
ledger row like every other request. gunicorn's master loads this class, so it imports
nothing beyond gunicorn's own worker (the app's modules are imported in the worker).
"""

from __future__ import annotations

import http
import logging
from typing import Any

import orjson
from gunicorn import util
from gunicorn.http import errors as gerrors
from gunicorn.workers.ggevent import GeventWorker

from qwenproxy.errors import InvalidRequestError, PermissionDeniedError, ProxyError
from qwenproxy.serving import LIMIT_REQUEST_FIELD_SIZE, LIMIT_REQUEST_FIELDS, LIMIT_REQUEST_LINE

log = logging.getLogger(__name__)

# The statuses gunicorn's own `Worker.handle_error` (gunicorn/workers/base.py, 27.0) gives
# each of its parse errors, with the error code the ledger records and what to tell.
_REFUSALS: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (
        gerrors.LimitRequestHeaders,
        431,
        "request_header_fields_too_large",
        f"The request's headers are too large: at most {LIMIT_REQUEST_FIELDS} fields of "
        f"{LIMIT_REQUEST_FIELD_SIZE} bytes each.",
    ),
    (
        gerrors.LimitRequestLine,
        414,
        "request_line_too_long",
        f"The request line (method, path and query) is longer than {LIMIT_REQUEST_LINE} "
        "bytes.",
    ),
    (
        gerrors.UnsupportedTransferCoding,
        501,
        "unsupported_transfer_coding",
        "The request's Transfer-Encoding is not supported; send chunked or Content-Length.",
    ),
    (
        gerrors.ExpectationFailed,
        417,
        "expectation_failed",
        "The request's Expect header is not supported.",
    ),
)
_APP_FAULTS = (
    gerrors.InvalidResponseHeader,
    gerrors.InvalidResponseHeaderName,
    gerrors.ConfigurationProblem,
)


def gunicorn_refusal(exc: BaseException) -> ProxyError:
    """The error a client sees for what gunicorn raised while reading (or, for a response
    header the app should never have made, answering) its request."""
    if isinstance(exc, _APP_FAULTS):
        return ProxyError("The proxy hit an internal error; see its log.")
    for kind, status, code, message in _REFUSALS:
        if isinstance(exc, kind):
            return InvalidRequestError(message, status=status, code=code)
    if isinstance(exc, gerrors.ForbiddenProxyRequest):
        return PermissionDeniedError("The request came through a proxy that is not allowed.")
    if isinstance(exc, gerrors.ParseException):
        return InvalidRequestError(f"The request is not valid HTTP/1.1 ({type(exc).__name__}).")
    return ProxyError("The proxy hit an internal error; see its log.")


def error_bytes(error: ProxyError, anthropic: bool = False) -> bytes:
    """A whole HTTP/1.1 response carrying `error` as JSON; the connection closes after it."""
    if anthropic:
        from qwenproxy.doors.anthropic.answer import error_body_for

        body = orjson.dumps(error_body_for(error))
    else:
        body = orjson.dumps(error.to_body())
    head = (
        f"HTTP/1.1 {error.status} {http.HTTPStatus(error.status).phrase}\r\n"
        "Connection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class EdgeGeventWorker(GeventWorker):
    """`worker_class` of `python -m qwenproxy serve` and the Procfile."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        error = gunicorn_refusal(exc)
        ip = (addr or ("",))[0]
        if error.status >= 500:
            self.log.exception("Error handling request from ip=%s", ip)
        else:
            self.log.warning("Invalid request from ip=%s: %s", ip, type(exc).__name__)
        path = getattr(req, "path", None) or ""
        try:
            util.write_nonblock(client, error_bytes(error, path.startswith("/v1/messages")))
        except Exception:
            self.log.debug("Failed to send error message.")
        self._record(error)

    def _record(self, error: ProxyError) -> None:
        """The refused request's ledger row: nothing but its status and error code is
        known (no client key, session or model: its head was never read)."""
        services = getattr(getattr(self, "wsgi", None), "extensions", {}).get("qwenproxy")
        accounting = getattr(services, "accounting", None)
        if accounting is None:
            return
        from qwenproxy.pipeline.context import RequestContext

        ctx = RequestContext("", "")
        ctx.fail(error)
        ctx.outcome.finish()
        try:
            accounting.finished(ctx)
        except Exception:  # accounting must never take the worker down
            log.exception("recording a refused request failed")
