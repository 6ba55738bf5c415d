"""What views share: the services of the current app, the client check, the request body
(read with a cap and checked by `services/input_rules.py`, one step for every door), and
the per-request context (client, session) handed to the pipeline."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from flask import Response, current_app, g, request
from werkzeug.datastructures import Headers

from qwenproxy.errors import ClientGoneError, InvalidRequestError, ProxyError
from qwenproxy.schemas import parse_json_object
from qwenproxy.services.completions import Completion, RequestContext, StreamingCompletion
from qwenproxy.services.container import Services
from qwenproxy.services.input_rules import check_request_model, read_capped
from qwenproxy.services.pipeline_frames import StreamTranslator, translate_frames
from qwenproxy.services.sessions import session_id_for
from qwenproxy.services.upstream_pool import peer_closed

log = logging.getLogger(__name__)


def services() -> Services:
    return current_app.extensions["qwenproxy"]


def require_client() -> None:
    """`before_request` hook of the API blueprints: 401/403 unless the client may pass."""
    g.client_id = services().access.check(request.headers, request.remote_addr)


def request_json(
    load: Callable[[bytearray], dict[str, Any]] = parse_json_object,
) -> dict[str, Any]:
    """The body of this request, checked before anything goes upstream: at most
    MAX_BODY_BYTES however it is framed (Content-Length or chunked; never more is held),
    decoded and nested no deeper than the proxy can encode again (`load`, which also
    applies a door's schema), and a `model` that is a valid name."""
    try:
        raw = read_capped(
            request.environ["wsgi.input"],
            request.content_length,
            services().config.max_body_bytes,
        )
    except ProxyError:
        raise
    except OSError:  # gunicorn's NoMoreData too: the client left before its body ended
        raise ClientGoneError("The client closed the connection while sending the body.") from None
    except Exception as exc:  # gunicorn's parse errors of a chunked body
        raise InvalidRequestError(
            f"The request body is not valid chunked encoding ({type(exc).__name__})."
        ) from None
    body = load(raw)
    check_request_model(body)
    return body


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
ErrorBody = Callable[[ProxyError], dict[str, Any]]


def _openai_error_body(error: ProxyError) -> dict[str, Any]:
    return error.to_body()


def pipeline_response(
    result: Completion | StreamingCompletion,
    frames: Callable[[Iterator[bytes]], Iterator[bytes]] = lambda frames: frames,
    answer: Callable[[dict[str, Any]], dict[str, Any]] = lambda body: body,
) -> Response:
    """The HTTP response for a pipeline result; front doors pass their translations.
    A stream needs nothing from Flask's request context, so it runs without one: with
    `stream_with_context` each open stream held 2.3 KB more (35.7 against 33.4 KB
    measured over 2,000 streams) and one generator more."""
    if isinstance(result, StreamingCompletion):
        return Response(
            frames(result.frames),
            mimetype="text/event-stream",
            headers={**SSE_HEADERS, **result.headers},
        )
    return Response(
        orjson.dumps(answer(result.body)), mimetype="application/json", headers=result.headers
    )


def run_pipeline(
    body: dict[str, Any],
    ctx: RequestContext,
    frames: Callable[[Iterator[bytes]], Iterator[bytes]] = lambda frames: frames,
    answer: Callable[[dict[str, Any]], dict[str, Any]] = lambda body: body,
    error_body: ErrorBody = _openai_error_body,
) -> Response:
    """Run the chat pipeline for this request and make its HTTP response. With
    NONSTREAM_KEEPALIVE, a non-stream answer slower than the interval leaves as a 200
    whose body is spaces and then the JSON — the answer, or `error_body` of the error
    that came after the 200 (the ledger keeps the real status)."""
    srv = services()
    keepalive = srv.nonstream_keepalive
    if keepalive is None or body.get("stream"):
        return pipeline_response(srv.completions.handle(body, ctx), frames, answer)

    def work(tick: Callable[[], None]) -> Completion | StreamingCompletion:
        ctx.on_wait = tick
        return srv.completions.handle(body, ctx)

    def render(result: Any, error: BaseException | None) -> bytes:
        if error is None:
            try:
                return orjson.dumps(answer(result.body))
            except Exception as exc:  # the translation failed: an error body after all
                error = exc
        if not isinstance(error, ProxyError):
            log.error("a slow answer failed after its keep-alive started", exc_info=error)
            error = ProxyError("The proxy hit an internal error; see its log.")
        return orjson.dumps(error_body(error))

    result, slow = keepalive.run(work, render)
    if slow is None:
        return pipeline_response(result, frames, answer)
    return Response(slow.chunks(), mimetype="application/json", headers=SSE_HEADERS)


def translated_door(
    to_chat: Callable[[dict[str, Any], Any], Any],
    stream_translator: Callable[[Any], StreamTranslator],
    to_answer: Callable[[dict[str, Any], Any], dict[str, Any]],
    error_body: ErrorBody = _openai_error_body,
) -> Response:
    """A front door that speaks another API: translate the body into a chat request, run
    the pipeline, and translate its answer (or its stream) back."""
    translated = to_chat(request_json(), services().config.anthropic_model_map)
    ctx = request_context(requested_model=translated.model)
    ctx.cache_markers = getattr(translated, "cache_markers", False)
    return run_pipeline(
        translated.chat,
        ctx,
        lambda frames: translate_frames(frames, stream_translator(translated)),
        lambda body: to_answer(body, translated),
        error_body,
    )


def request_context(requested_model: str | None = None) -> RequestContext:
    """The pipeline's context for this request; front doors that translate model names
    pass the name their client sent, so the ledger shows it. Under gunicorn the pipeline
    can also tell whether the client has left (from its socket)."""
    client_id = g.client_id
    session = session_id_for(client_id, request.headers.get("X-Session-ID"))
    sock = request.environ.get("gunicorn.socket")
    ctx = RequestContext(
        client_id,
        session,
        requested_model=requested_model,
        client_gone=None if sock is None else functools.partial(peer_closed, sock),
    )
    g.pipeline_ctx = ctx  # an error handler records the request if the pipeline did not
    return ctx


def require_client_or_key_param() -> None:
    """Like `require_client`, and also takes the proxy key as `?key=` (a browser opening
    /dashboard cannot send a header). The key in the URL wins over any header."""
    key = request.args.get("key", "").strip()
    headers = request.headers
    if key:
        headers = Headers(request.headers)
        headers.remove("Authorization")
        headers["x-api-key"] = key
    g.client_id = services().access.check(headers, request.remote_addr)
