"""`POST /v1/chat/completions`, streamed (SSE) or not."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, request, stream_with_context

from qwenproxy.api.context import request_context, require_client, services
from qwenproxy.schemas import load_chat_completion_request
from qwenproxy.services.completions import StreamingCompletion

bp = Blueprint("chat", __name__)
bp.before_request(require_client)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@bp.post("/v1/chat/completions")
def chat_completions() -> Response:
    body = load_chat_completion_request(request.get_data(cache=False))
    result = services().completions.handle(body, request_context())
    if isinstance(result, StreamingCompletion):
        return Response(
            stream_with_context(result.frames),
            mimetype="text/event-stream",
            headers={**SSE_HEADERS, **result.headers},
        )
    return Response(orjson.dumps(result.body), mimetype="application/json", headers=result.headers)
