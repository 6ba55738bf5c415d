"""What views share: the services of the current app, the client check, the request body
(read with a cap and checked by `pipeline/input_rules.py`, one step for every door), and
the per-request context (client, session) handed to the pipeline."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from flask import Response, current_app, g, request

from qwenproxy.api.errors import ErrorBody
from qwenproxy.container import Services
from qwenproxy.doors.translator import StreamTranslator, translate_events
from qwenproxy.edge.access import Caller
from qwenproxy.edge.schemas import parse_json_object
from qwenproxy.errors import (
    ClientGoneError,
    InvalidRequestError,
    PermissionDeniedError,
    ProxyError,
)
from qwenproxy.pipeline.context import RequestContext
from qwenproxy.pipeline.input_rules import check_request_model, read_capped
from qwenproxy.pipeline.relay import chat_frames
from qwenproxy.pipeline.service import Completion, StreamingCompletion
from qwenproxy.pipeline.sessions import session_id_for
from qwenproxy.upstream.http.pool import peer_closed

log = logging.getLogger(__name__)


def services() -> Services:
    return current_app.extensions["qwenproxy"]


def require_client() -> None:
    """`before_request` hook of the API blueprints: 401/403 unless the client may pass."""
    set_caller(services().access.identify(request.headers, request.remote_addr))


def set_caller(caller: Caller) -> None:
    g.client_id = caller.client_id
    g.client_key = caller.client_key


def caller_key() -> Any:
    """The named key of this request's caller (a ClientKey), or None for an admin."""
    return g.get("client_key")


def require_admin(what: str = "This endpoint") -> None:
    """403 unless the caller is an admin (a PROXY_API_KEY key, or a local caller when no
    key is configured): named keys see only their own usage."""
    if caller_key() is None:
        return
    if services().access.has_admin_keys:
        hint = "use an admin key (one of PROXY_API_KEY)"
    else:
        hint = "no admin key is set: set PROXY_API_KEY on the proxy"
    raise PermissionDeniedError(
        f"{what} is for admin keys; a named client key sees only its own usage "
        f"(/usage/stats, /usage/recent, /dashboard). To read it, {hint}."
    )


def admin_only(view: Callable[..., Any]) -> Callable[..., Any]:
    """A view decorator: `require_admin()` before the view (e.g. /metrics, /usage/quota)."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        require_admin(f"{request.method} {request.path}")
        return view(*args, **kwargs)

    return wrapped


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


def _openai_error_body(error: ProxyError) -> dict[str, Any]:
    return error.to_body()


def pipeline_response(
    result: Completion | StreamingCompletion,
    frames: Callable[[Iterator[list[Any]]], Iterator[bytes]] = chat_frames,
    answer: Callable[[dict[str, Any]], dict[str, Any]] = lambda body: body,
) -> Response:
    """The HTTP response for a pipeline result; front doors pass their translations
    (`frames` encodes the stream's batches of events: OpenAI SSE by default).
    A stream needs nothing from Flask's request context, so it runs without one: with
    `stream_with_context` each open stream held 2.3 KB more (35.7 against 33.4 KB
    measured over 2,000 streams) and one generator more."""
    if isinstance(result, StreamingCompletion):
        return Response(
            frames(result.events),
            mimetype="text/event-stream",
            headers={**SSE_HEADERS, **result.headers},
        )
    return Response(
        orjson.dumps(answer(result.body)), mimetype="application/json", headers=result.headers
    )


def run_pipeline(
    body: dict[str, Any],
    ctx: RequestContext,
    frames: Callable[[Iterator[list[Any]]], Iterator[bytes]] = chat_frames,
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
    load: Callable[[bytearray], dict[str, Any]] = parse_json_object,
) -> Response:
    """A front door that speaks another API: check the body (`load`, the door's schema),
    translate it into a chat request, run the pipeline, and translate its answer (or its
    stream) back."""
    translated = to_chat(request_json(load), services().config.anthropic_model_map)
    ctx = request_context(
        requested_model=translated.model,
        translated=True,
        cache_markers=getattr(translated, "cache_markers", False),
    )
    return run_pipeline(
        translated.chat,
        ctx,
        lambda events: translate_events(events, stream_translator(translated)),
        lambda body: to_answer(body, translated),
        error_body,
    )


def request_context(
    requested_model: str | None = None, translated: bool = False, cache_markers: bool = False
) -> RequestContext:
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
        translated=translated,
        cache_markers=cache_markers,
        client_key=caller_key(),
        client_gone=None if sock is None else functools.partial(peer_closed, sock),
    )
    g.pipeline_ctx = ctx  # an error handler records the request if the pipeline did not
    return ctx
